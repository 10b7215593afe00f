//! Accounts against a real store and a store-writer stand-in, with a fake
//! hasher (argon2id itself is tested in `password`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::wait::Sender;

use super::*;
use crate::auth::Auth;
use crate::config::Config;
use crate::store::{Store, WriterCmd};

/// Cheap, recognisable hashes; counts every verification and what it was
/// checked against.
#[derive(Default)]
struct Fake {
    hashes: AtomicUsize,
    verified_against: Mutex<Vec<String>>,
}

impl Passwords for Fake {
    fn hash(&self, password: &[u8]) -> Result<String, password::PasswordError> {
        self.hashes.fetch_add(1, Ordering::SeqCst);
        Ok(format!("fake${}", crate::auth::secret::hex_encode(password)))
    }
    fn verify(&self, phc: &str, password: &[u8]) -> bool {
        self.verified_against.lock().unwrap().push(phc.to_string());
        phc == format!("fake${}", crate::auth::secret::hex_encode(password))
    }
    fn dummy(&self) -> &str {
        "fake$dummy"
    }
}

impl Fake {
    fn verifications(&self) -> Vec<String> {
        std::mem::take(&mut *self.verified_against.lock().unwrap())
    }
}

struct World {
    dir: Option<tempfile::TempDir>,
    store: Store,
    auth: Auth,
    config: Config,
    writer: Option<Sender<WriterCmd>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        World::at(dir)
    }

    fn at(dir: tempfile::TempDir) -> World {
        let store = Store::open(dir.path()).unwrap();
        let (tx, rx) = crate::wait::bounded::<WriterCmd>(16);
        let s = store.clone();
        // Runs jobs as store-writer does: one transaction each.
        let thread = std::thread::spawn(move || {
            for cmd in rx.iter() {
                if let WriterCmd::Job(mut job) = cmd {
                    let r = s.run_job(job.as_mut(), false);
                    job.done(r);
                }
            }
        });
        World {
            dir: Some(dir),
            store,
            auth: Auth::from_secret(b"accounts-test-secret-of-32-bytes-or-more", None, None).unwrap(),
            config: Config::default(),
            writer: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops the writer and hands back the directory (a restart).
    fn stop(mut self) -> tempfile::TempDir {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        // `self`, with its store, is dropped on return: the file is free.
        self.dir.take().unwrap()
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx { auth: &self.auth, config: &self.config, store: &self.store, writer: self.writer.as_ref().unwrap() }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ip(s: &str) -> Option<std::net::IpAddr> {
    Some(s.parse().unwrap())
}

fn creds(u: &str, p: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"username": u, "password": p})).unwrap()
}

fn rt(v: &serde_json::Value) -> String {
    v["refresh_token"].as_str().unwrap().to_string()
}

fn body(token: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "refresh_token": token })).unwrap()
}

const T0: u64 = 1_800_000_000_000;

#[test]
fn register_login_and_the_session_shape() {
    let w = World::new();
    let pw = Fake::default();
    let v = register(&w.ctx(), &pw, &creds("ann", "hunter22!"), ip("10.0.0.1"), T0).unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 900);
    assert_eq!(w.auth.verify(v["access_token"].as_str().unwrap()).unwrap().sub, "ann");
    assert_eq!(rt(&v).len(), 64);
    // The token is stored only as its hash.
    assert!(kv::get(&w.store, REFRESH, &rt(&v), T0).unwrap().is_none());
    assert!(kv::get(&w.store, REFRESH, &token_hash(&rt(&v)), T0).unwrap().is_some());

    assert!(matches!(register(&w.ctx(), &pw, &creds("ann", "another-one"), ip("10.0.0.1"), T0), Err(Refusal::Taken)));
    assert_eq!(pw.hashes.load(Ordering::SeqCst), 1, "a taken name is not hashed");
    for (u, p) in [("", "long enough"), ("a\nb", "long enough"), ("bo", "short"), ("bo", &"x".repeat(1025))] {
        assert!(matches!(register(&w.ctx(), &pw, &creds(u, p), ip("10.0.0.1"), T0), Err(Refusal::Bad(_))), "{u:?}");
    }
    assert!(matches!(register(&w.ctx(), &pw, b"{\"username\":1}", None, T0), Err(Refusal::Bad(_))));

    let v = login(&w.ctx(), &pw, &creds("ann", "hunter22!"), ip("10.0.0.2"), T0).unwrap();
    assert_eq!(w.auth.verify(v["access_token"].as_str().unwrap()).unwrap().sub, "ann");
    assert!(matches!(
        login(&w.ctx(), &pw, &creds("ann", "hunter22?"), ip("10.0.0.2"), T0),
        Err(Refusal::Unauthorized(LOGIN_FAILED))
    ));
}

#[test]
fn unknown_users_cost_one_verification_like_wrong_passwords() {
    let w = World::new();
    let pw = Fake::default();
    register(&w.ctx(), &pw, &creds("ann", "right password"), None, T0).unwrap();
    pw.verifications();
    let wrong = login(&w.ctx(), &pw, &creds("ann", "wrong password"), ip("10.0.0.1"), T0).unwrap_err();
    let against_wrong = pw.verifications();
    let unknown = login(&w.ctx(), &pw, &creds("nobody", "wrong password"), ip("10.0.0.2"), T0).unwrap_err();
    let against_unknown = pw.verifications();
    assert_eq!(against_wrong.len(), 1);
    assert!(against_wrong[0].starts_with("fake$") && against_wrong[0] != "fake$dummy");
    assert_eq!(against_unknown, ["fake$dummy"]);
    // Same answer, byte for byte.
    let (a, b) = (wrong.reply(), unknown.reply());
    assert_eq!((a.status, &a.body, &a.headers), (b.status, &b.body, &b.headers));
    assert_eq!(a.status, 401);

    // A user without a password (provider or passkey sign-in) too.
    crate::store::write_job(w.ctx().writer, |txn| ensure_user(&mut Kv::open(txn, T0)?, "oidc-user")).unwrap();
    let none = login(&w.ctx(), &pw, &creds("oidc-user", "anything at all"), ip("10.0.0.3"), T0).unwrap_err();
    assert_eq!(pw.verifications(), ["fake$dummy"]);
    assert_eq!(none.reply().body, a.body);
}

#[test]
fn refresh_rotates_and_reuse_revokes_the_family() {
    let w = World::new();
    let pw = Fake::default();
    let first = rt(&register(&w.ctx(), &pw, &creds("ann", "right password"), None, T0).unwrap());
    // A second sign-in is a family of its own.
    let other = rt(&login(&w.ctx(), &pw, &creds("ann", "right password"), None, T0).unwrap());

    let v = refresh(&w.ctx(), &body(&first), None, T0 + 1).unwrap();
    assert_eq!(w.auth.verify(v["access_token"].as_str().unwrap()).unwrap().sub, "ann");
    let second = rt(&v);
    assert_ne!(second, first);
    let third = rt(&refresh(&w.ctx(), &body(&second), None, T0 + 2).unwrap());

    // `first` is spent: presenting it again is theft, and the whole family goes.
    let e = refresh(&w.ctx(), &body(&first), None, T0 + 3).unwrap_err();
    assert!(matches!(e, Refusal::Unauthorized(m) if m.contains("used twice")), "{e:?}");
    for t in [&third, &second, &first] {
        assert!(matches!(refresh(&w.ctx(), &body(t), None, T0 + 4), Err(Refusal::Unauthorized(_))), "{t}");
    }
    // The other sign-in is untouched.
    let other2 = rt(&refresh(&w.ctx(), &body(&other), None, T0 + 5).unwrap());

    // Logout revokes; unknown tokens and garbage are refused.
    assert_eq!(logout(&w.ctx(), &body(&other2), None, T0 + 6).unwrap()["revoked"], true);
    assert_eq!(logout(&w.ctx(), &body(&other2), None, T0 + 6).unwrap()["revoked"], false);
    assert!(matches!(refresh(&w.ctx(), &body(&other2), None, T0 + 7), Err(Refusal::Unauthorized(_))));
    for t in ["", "nope", &"a".repeat(10_000)] {
        assert!(matches!(refresh(&w.ctx(), &body(t), None, T0), Err(Refusal::Unauthorized(_))));
    }
    assert!(matches!(refresh(&w.ctx(), b"[]", None, T0), Err(Refusal::Bad(_))));
}

#[test]
fn families_expire_and_are_pruned() {
    let w = World::new();
    let pw = Fake::default();
    let first = rt(&register(&w.ctx(), &pw, &creds("ann", "right password"), None, T0).unwrap());
    let second = rt(&refresh(&w.ctx(), &body(&first), None, T0 + 1000).unwrap());
    let end = T0 + millis(REFRESH_TTL);
    // Rotation does not stretch the family's life.
    let third = rt(&refresh(&w.ctx(), &body(&second), None, end - 1).unwrap());
    assert!(matches!(refresh(&w.ctx(), &body(&third), None, end), Err(Refusal::Unauthorized(_))));
    // Pruning removes all of it: three tokens and the family.
    let txn = w.store.db().begin_write().unwrap();
    let gone = kv::prune(&txn, end + 1, 100).unwrap();
    txn.commit().unwrap();
    assert!(gone >= 4, "{gone}");
    assert!(kv::get(&w.store, REFRESH, &token_hash(&first), 0).unwrap().is_none());
}

#[test]
fn racing_refreshes_rotate_once() {
    let w = World::new();
    let pw = Fake::default();
    let first = rt(&register(&w.ctx(), &pw, &creds("ann", "right password"), None, T0).unwrap());
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| refresh(&w.ctx(), &body(&first), None, T0 + 1))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    // The losers were reuse, so the winner's token is revoked as well.
    let won = results.iter().find_map(|r| r.as_ref().ok()).unwrap();
    assert!(refresh(&w.ctx(), &body(&rt(won)), None, T0 + 2).is_err());
}

#[test]
fn failed_logins_are_limited_per_account_and_per_ip_across_restarts() {
    let w = World::new();
    let pw = Fake::default();
    register(&w.ctx(), &pw, &creds("ann", "right password"), None, T0).unwrap();
    register(&w.ctx(), &pw, &creds("bob", "right password"), None, T0).unwrap();
    // Ten failures for ann, each from another address.
    for i in 0..10 {
        let e = login(&w.ctx(), &pw, &creds("ann", "wrong password"), ip(&format!("10.0.1.{i}")), T0 + i).unwrap_err();
        assert!(matches!(e, Refusal::Unauthorized(_)), "{i}: {e:?}");
    }
    let dir = w.stop();
    let w = World::at(dir);
    pw.verifications();
    // The eleventh, after a restart, from a fresh address, with the right password.
    let e = login(&w.ctx(), &pw, &creds("ann", "right password"), ip("10.9.9.9"), T0 + 60_000).unwrap_err();
    let Refusal::Limited(l) = e else { panic!("{e:?}") };
    assert_eq!(l.retry_after_secs, 15 * 60 - 60);
    assert!(pw.verifications().is_empty(), "refused before hashing");
    let r = Refusal::Limited(l).reply();
    assert_eq!(r.status, 429);
    assert!(r.headers.contains(&("Retry-After", "840".to_string())));
    // Bob, from that address, is fine; ann is fine once the window ends.
    login(&w.ctx(), &pw, &creds("bob", "right password"), ip("10.9.9.9"), T0 + 60_000).unwrap();
    login(&w.ctx(), &pw, &creds("ann", "right password"), ip("10.9.9.9"), T0 + 15 * 60_000).unwrap();

    // Per address: ten failures against ten names, then even bob is refused from there.
    for i in 0..10 {
        let _ = login(&w.ctx(), &pw, &creds(&format!("u{i}"), "wrong password"), ip("10.7.7.7"), T0 + 1);
    }
    assert!(matches!(
        login(&w.ctx(), &pw, &creds("bob", "right password"), ip("10.7.7.7"), T0 + 2),
        Err(Refusal::Limited(_))
    ));
    login(&w.ctx(), &pw, &creds("bob", "right password"), ip("10.7.7.8"), T0 + 2).unwrap();
}

#[test]
fn a_success_clears_the_account_count_not_the_address_count() {
    let w = World::new();
    let pw = Fake::default();
    register(&w.ctx(), &pw, &creds("ann", "right password"), None, T0).unwrap();
    for _ in 0..9 {
        let _ = login(&w.ctx(), &pw, &creds("ann", "wrong password"), ip("10.0.0.1"), T0);
    }
    login(&w.ctx(), &pw, &creds("ann", "right password"), ip("10.0.0.2"), T0).unwrap();
    for _ in 0..9 {
        let _ = login(&w.ctx(), &pw, &creds("ann", "wrong password"), ip("10.0.0.2"), T0);
    }
    login(&w.ctx(), &pw, &creds("ann", "right password"), ip("10.0.0.3"), T0).unwrap();
    // 10.0.0.1 has nine failures: one more and it is out.
    let _ = login(&w.ctx(), &pw, &creds("zed", "wrong password"), ip("10.0.0.1"), T0);
    assert!(matches!(
        login(&w.ctx(), &pw, &creds("ann", "right password"), ip("10.0.0.1"), T0),
        Err(Refusal::Limited(_))
    ));
}

#[test]
fn registrations_and_refreshes_have_buckets() {
    let w = World::new();
    let pw = Fake::default();
    for i in 0..REGISTER_PER_IP.max {
        let _ = register(&w.ctx(), &pw, &creds(&format!("u{i}"), "right password"), ip("10.0.0.1"), T0);
    }
    assert!(matches!(
        register(&w.ctx(), &pw, &creds("late", "right password"), ip("10.0.0.1"), T0),
        Err(Refusal::Limited(_))
    ));
    let mut t = rt(&register(&w.ctx(), &pw, &creds("late", "right password"), ip("10.0.0.2"), T0).unwrap());
    for _ in 0..REFRESH_PER_IP.max {
        t = rt(&refresh(&w.ctx(), &body(&t), ip("10.0.0.3"), T0).unwrap());
    }
    assert!(matches!(refresh(&w.ctx(), &body(&t), ip("10.0.0.3"), T0), Err(Refusal::Limited(_))));
    // Refused by the bucket, the token was not spent.
    refresh(&w.ctx(), &body(&t), ip("10.0.0.4"), T0).unwrap();
}

#[test]
fn issue_session_starts_a_family() {
    let w = World::new();
    let v = issue(&w.ctx(), "ann", T0).unwrap();
    for k in ["access_token", "token_type", "expires_in", "refresh_token"] {
        assert!(v.get(k).is_some(), "{k}");
    }
    refresh(&w.ctx(), &body(&rt(&v)), None, T0 + 1).unwrap();
    assert!(matches!(issue(&w.ctx(), "", T0), Err(Refusal::Bad(_))));
}

#[test]
fn damaged_records_read_as_absent() {
    let w = World::new();
    crate::store::write_job(w.ctx().writer, |txn| {
        let mut kv = Kv::open(txn, T0)?;
        kv.put(USER, "ann", b"\x00garbage", 0)?;
        kv.put(REFRESH, &token_hash("t"), b"{\"user\":1}", 0)
    })
    .unwrap();
    let pw = Fake::default();
    assert!(matches!(login(&w.ctx(), &pw, &creds("ann", "whatever!"), None, T0), Err(Refusal::Unauthorized(_))));
    assert_eq!(pw.verifications(), ["fake$dummy"]);
    assert!(matches!(refresh(&w.ctx(), &body("t"), None, T0), Err(Refusal::Unauthorized(_))));
}
