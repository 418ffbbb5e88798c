//! `coffer`: see `coffer --help`. Everything is in the library, so the tests drive the real
//! wiring.

fn main() -> std::process::ExitCode {
    coffer_cli::main()
}
