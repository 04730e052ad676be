//! `bungeo-shim`: starts the supervisor of one container and prints its ttrpc address.
//! See the library (`bungeo_shim`) for what the shim does and the flags it takes.

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "infra") {
        let launched =
            bungeo_shim::infra::parse_args(&args[1..]).and_then(|p| bungeo_shim::infra::launch(&p));
        if let Err(e) = launched {
            eprintln!("bungeo-shim infra: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", bungeo_shim::config::USAGE);
        return;
    }
    let cfg = match bungeo_shim::Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bungeo-shim: {e}");
            std::process::exit(2);
        }
    };
    // Only the launching process returns here; the shim itself exits inside `start`.
    match bungeo_shim::detach::start(&cfg) {
        Ok(address) => println!("{address}"),
        Err(e) => {
            eprintln!("bungeo-shim: {e}");
            std::process::exit(1);
        }
    }
}
