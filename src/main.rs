//! The `chorus` binary: everything lives in `chorus-cli`.

/// mimalloc instead of the system allocator: the pipeline allocates many small, short-lived
/// buffers across threads, where glibc's malloc spent a quarter of the CPU in `chorus bench`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    chorus_cli::main()
}
