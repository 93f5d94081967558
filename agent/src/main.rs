//! The `mqtrace` command: a thin shell over the library, one file per subcommand in `cli/`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mqtrace::cli::main()
}
