//! `pgset-agent`: the container entrypoint.

fn main() {
    eprintln!("pgset-agent {}", pgset_spec::VERSION);
    std::process::exit(2);
}
