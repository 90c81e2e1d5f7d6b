fn main() -> std::process::ExitCode {
    pgquorum::cli::main()
}
