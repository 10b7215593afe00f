//! The `roomcast` binary: reads the command line and runs one command.
//!
//! Exit status: 0 on success (and for `--help`), 2 for a usage or settings
//! problem, 1 when a command fails while running.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use roomcast::auth::Auth;
use roomcast::config::{self, CliError, DevCertRequest, Invocation, TokenRequest};

fn main() -> ExitCode {
    let invocation = match config::parse_command_line(std::env::args_os(), &config::process_env) {
        Ok(invocation) => invocation,
        // clap prints usage errors, help and version itself, with status 2 or 0.
        Err(CliError::Usage(e)) => e.exit(),
        Err(CliError::Config(e)) => {
            eprintln!("roomcast: config: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match invocation {
        Invocation::Serve(config) => match roomcast::server::run(config, std::env::args_os().collect()) {
            // Started on the wrong data directory: a setup error, like a bad
            // setting (a supervisor must not just restart it).
            Err(e @ roomcast::server::ServerError::Identity(_)) => {
                roomcast::log::fatal(&e.to_string());
                return ExitCode::from(2);
            }
            r => r.map_err(|e| e.to_string()),
        },
        Invocation::Token(request) => token(&request),
        Invocation::DevCert(request) => dev_cert(&request),
        Invocation::Backup { data, out } => match roomcast::store::backup_offline(&data, &out) {
            Ok(n) => {
                println!("wrote {} ({n} messages)", out.display());
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            roomcast::log::fatal(&message);
            ExitCode::from(1)
        }
    }
}

/// `roomcast token`: prints one token on stdout.
fn token(request: &TokenRequest) -> Result<(), String> {
    let (auth, from_file) = Auth::load_or_create(
        &request.data,
        request.jwt_secret.as_ref().map(|s| s.expose()),
        request.jwt_audience.as_deref(),
        request.jwt_issuer.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    if from_file {
        eprintln!("roomcast: signed with the secret in {}", request.data.join(roomcast::auth::SECRET_FILE).display());
    }
    let token = auth.mint(&request.sub, request.ttl, request.role.as_deref()).map_err(|e| e.to_string())?;
    writeln!(io::stdout(), "{token}").map_err(|e| format!("cannot write the token: {e}"))
}

/// `roomcast dev-cert`: a self-signed certificate for trying TLS locally.
fn dev_cert(request: &DevCertRequest) -> Result<(), String> {
    let certified = rcgen::generate_simple_self_signed(request.names.clone())
        .map_err(|e| format!("cannot make a certificate: {e}"))?;
    write_file(&request.out_cert, certified.cert.pem().as_bytes(), false)?;
    write_file(&request.out_key, certified.signing_key.serialize_pem().as_bytes(), true)?;
    println!("wrote {} and {} for {}", request.out_cert.display(), request.out_key.display(), request.names.join(", "));
    Ok(())
}

/// Writes `bytes` to `path`, replacing it. A private file gets mode 0600 from
/// its creation on, and an existing one is narrowed to 0600 before the key is
/// written into it, so the key is never readable by others.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), String> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let write = || -> io::Result<()> {
        let mut file = options.open(path)?;
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(bytes)
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}
