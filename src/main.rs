//! The `runner` binary: parses the command line, runs the command, maps errors to exit codes.

fn main() {
    rwkvinside::util::alloc::keep_freed_memory();
    let code = match rwkvinside::cli::main() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
