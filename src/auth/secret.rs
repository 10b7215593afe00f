//! The generated HS256 secret kept in `<data>/jwt-secret` (32 random
//! bytes as hex, mode 0600), for a server started without
//! `ROOMCAST_JWT_SECRET`; and the hex it is written in.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::{AuthError, SECRET_BYTES, SECRET_FILE};

fn secret_error(what: &str, path: &Path, e: io::Error) -> AuthError {
    AuthError::Secret(format!("{what} {}: {e}", path.display()))
}

/// Reads `<data>/jwt-secret`, or creates it.
///
/// Creation writes a private temporary file and then hard-links it into
/// place: the link fails if another process got there first, in which case
/// its secret is read instead. A rename would silently replace a secret that
/// a running server already signs with, and writing the final name directly
/// would let a concurrent reader see an empty file.
pub(crate) fn load_or_create_secret_file(data: &Path) -> Result<Vec<u8>, AuthError> {
    let path = data.join(SECRET_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => return decode_secret(&text, &path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(secret_error("cannot read", &path, e)),
    }
    fs::create_dir_all(data).map_err(|e| secret_error("cannot create", data, e))?;

    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut secret).map_err(|e| AuthError::Secret(format!("no randomness: {e}")))?;
    let hex = hex_encode(&secret);

    let tmp = data.join(format!(".{SECRET_FILE}.{}.tmp", std::process::id()));
    let written = write_private(&tmp, format!("{hex}\n").as_bytes());
    let linked = written.and_then(|()| fs::hard_link(&tmp, &path));
    // The temporary name is removed whatever happened; the link keeps the data.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(data);
            Ok(secret.to_vec())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let text = fs::read_to_string(&path).map_err(|e| secret_error("cannot read", &path, e))?;
            decode_secret(&text, &path)
        }
        Err(e) => Err(secret_error("cannot write", &path, e)),
    }
}

/// Creates `path` readable by its owner only, and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a new directory entry durable. Best effort: some platforms cannot
/// open a directory, and the secret is still usable without it.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn decode_secret(text: &str, path: &Path) -> Result<Vec<u8>, AuthError> {
    let bytes =
        hex_decode(text.trim()).ok_or_else(|| AuthError::Secret(format!("{}: not a hex string", path.display())))?;
    if bytes.is_empty() {
        return Err(AuthError::Secret(format!("{}: empty", path.display())));
    }
    Ok(bytes)
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

pub(crate) fn hex_decode(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
            _ => None,
        })
        .collect()
}
