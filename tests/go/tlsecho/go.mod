module mqtrace-tests/tlsecho

go 1.24
