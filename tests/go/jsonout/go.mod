module mqtrace-tests/jsonout

go 1.24
