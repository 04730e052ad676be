//! `bungeo-shim`, the per-container supervisor. The lifecycle issue builds it; until then this
//! binary refuses to run rather than pretend to supervise anything.

fn main() {
    eprintln!("bungeo-shim: not built yet in this version of bungeo; containers cannot be run");
    std::process::exit(1);
}
