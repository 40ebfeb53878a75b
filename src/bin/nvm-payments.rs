//! The `nvm-payments` command-line tool.

fn main() {}
