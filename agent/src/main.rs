//! The `mqtrace` command: a thin shell over the library, one file per subcommand in `cli/`.

fn main() -> std::process::ExitCode {
    mqtrace::cli::main()
}
