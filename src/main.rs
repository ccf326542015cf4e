//! The `annuaire` command.

fn main() -> std::process::ExitCode {
    // One TLS crypto provider for every rustls user in the process (HTTPS server, reqwest,
    // lettre, ldap3).
    let _ = rustls::crypto::ring::default_provider().install_default();
    annuaire::cli::main()
}
