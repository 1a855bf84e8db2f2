//! End-to-end encryption of a volume (docs/encryption.md): the key hierarchy and the seals the
//! mount will put on what leaves it. A random 256-bit data key per volume is wrapped (AES-256-GCM)
//! under a key derived from the user's secret with Argon2id; the server keeps only that envelope.
//! Block chunks are sealed with AES-256-GCM under a subkey per object (HKDF-SHA256), their
//! associated data naming the volume, the object that holds the chunk and its index; names are
//! sealed with AES-SIV (deterministic, so lookups work) with the parent inode as associated data;
//! symlink targets and xattr values with AES-256-GCM under a subkey per inode.

use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::wire::pb;

/// The only key derivation a volume's envelope names.
pub const KDF_ARGON2ID: &str = "argon2id";
/// Bytes of nonce in front of every GCM seal.
pub const NONCE_LEN: usize = 12;
/// Bytes of tag after every GCM seal, and in front of every SIV seal.
pub const TAG_LEN: usize = 16;
/// What a GCM seal adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// The chunk index under which a block object's chunk table is sealed.
pub const TABLE_INDEX: u32 = u32::MAX;

const SALT_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// Argon2id's cost. The default is the issue's (3 passes, 64 MiB, 4 lanes); an envelope may name
/// others, within [`KdfParams::check`]'s bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams { memory_kib: 64 << 10, iterations: 3, parallelism: 4 }
    }
}

impl KdfParams {
    /// Refuses parameters too weak to protect a secret or so large that opening the envelope
    /// would exhaust the client (an envelope comes from the server: it is not trusted for that).
    fn check(&self) -> Result<(), CryptoError> {
        let bad = |m: String| Err(CryptoError::BadEnvelope(m));
        if !(8 << 10..=4 << 20).contains(&self.memory_kib) {
            return bad(format!("Argon2id memory {} KiB is outside 8 MiB..=4 GiB", self.memory_kib));
        }
        if !(1..=64).contains(&self.iterations) {
            return bad(format!("Argon2id passes {} is outside 1..=64", self.iterations));
        }
        if !(1..=64).contains(&self.parallelism) {
            return bad(format!("Argon2id lanes {} is outside 1..=64", self.parallelism));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error(
        "the encryption secret is wrong for this volume: its data key does not open with it (give the secret the volume was created or last rekeyed with)"
    )]
    WrongSecret,
    #[error("the volume's encryption envelope cannot be used ({0}); it was not written by this version of stratusfs")]
    BadEnvelope(String),
    #[error("the encryption secret is empty: give it in a file or on stdin")]
    EmptySecret,
    #[error("sealed bytes failed their check: changed, moved from another place, or of another volume")]
    Tampered,
    #[error("the system's random number generator failed")]
    Random,
    #[error("reading the encryption secret from {0}")]
    Read(String),
}

/// A user's encryption secret, read from a file or stdin (never a command-line argument, which
/// other users of the machine can see); zeroed when dropped, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret of these bytes; an empty one is refused.
    pub fn new(bytes: Vec<u8>) -> Result<Secret, CryptoError> {
        if bytes.is_empty() {
            return Err(CryptoError::EmptySecret);
        }
        Ok(Secret(zeroize::Zeroizing::new(bytes)))
    }

    /// The secret in file `path` (`-`: standard input). One trailing newline (`\n` or `\r\n`), as
    /// `echo` and editors leave, is not part of it; any other byte is.
    pub fn read(path: &std::path::Path) -> Result<Secret, CryptoError> {
        use std::io::Read;
        let mut bytes = zeroize::Zeroizing::new(Vec::new());
        let r = match path.as_os_str() == "-" {
            true => std::io::stdin().read_to_end(&mut bytes),
            false => std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)),
        };
        r.map_err(|e| CryptoError::Read(format!("{}: {e}", path.display())))?;
        let mut n = bytes.len();
        if bytes[..n].ends_with(b"\n") {
            n -= 1;
            if bytes[..n].ends_with(b"\r") {
                n -= 1;
            }
        }
        Secret::new(bytes[..n].to_vec())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// A volume's keys, opened from its envelope with the user's secret. Zeroed when dropped.
pub struct VolumeKeys {
    data: [u8; KEY_LEN],
    /// The AES-SIV key of names (two AES-256 keys).
    names: [u8; 64],
    volume: String,
}

impl Drop for VolumeKeys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.data);
        zeroize::Zeroize::zeroize(&mut self.names);
    }
}

impl std::fmt::Debug for VolumeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeKeys {{ volume: {}, key id: {} }}", self.volume, self.key_id())
    }
}

fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).map_err(|_| CryptoError::Random)?;
    Ok(b)
}

/// Argon2id(secret, salt) with `p`: the key that wraps the data key.
fn wrapping_key(secret: &[u8], salt: &[u8], p: KdfParams) -> Result<[u8; KEY_LEN], CryptoError> {
    if secret.is_empty() {
        return Err(CryptoError::EmptySecret);
    }
    p.check()?;
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(KEY_LEN))
        .map_err(|e| CryptoError::BadEnvelope(format!("Argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; KEY_LEN];
    argon.hash_password_into(secret, salt, &mut out).map_err(|e| CryptoError::BadEnvelope(format!("Argon2id: {e}")))?;
    Ok(out)
}

/// What the wrapped key is bound to: the format and every KDF input but the secret, so that an
/// envelope whose parameters were changed does not open.
fn envelope_aad(salt: &[u8], p: KdfParams) -> Vec<u8> {
    let mut aad = b"stratusfs envelope v1 argon2id".to_vec();
    for v in [p.memory_kib, p.iterations, p.parallelism] {
        aad.extend_from_slice(&v.to_le_bytes());
    }
    aad.extend_from_slice(salt);
    aad
}

fn gcm_key(key: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key"))
}

/// nonce ‖ ciphertext ‖ tag of `plain` under `key` with a random nonce.
fn gcm_seal(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce = random::<NONCE_LEN>()?;
    let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out[NONCE_LEN..])
        .map_err(|_| CryptoError::Random)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// The plaintext of [`gcm_seal`]'s output, or [`CryptoError::Tampered`].
fn gcm_open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(CryptoError::Tampered);
    }
    let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).map_err(|_| CryptoError::Tampered)?;
    let mut buf = sealed[NONCE_LEN..].to_vec();
    let n = key.open_in_place(nonce, Aad::from(aad), &mut buf).map_err(|_| CryptoError::Tampered)?.len();
    buf.truncate(n);
    Ok(buf)
}

/// A new volume's envelope: a random data key wrapped under `secret` with `params`.
pub fn create_envelope(secret: &[u8], params: KdfParams) -> Result<pb::EncryptionEnvelope, CryptoError> {
    let data = random::<KEY_LEN>()?;
    wrap(&data, secret, params)
}

fn wrap(data: &[u8; KEY_LEN], secret: &[u8], params: KdfParams) -> Result<pb::EncryptionEnvelope, CryptoError> {
    let salt = random::<SALT_LEN>()?;
    let mut kek = wrapping_key(secret, &salt, params)?;
    let wrapped = gcm_seal(&gcm_key(&kek), &envelope_aad(&salt, params), data);
    zeroize::Zeroize::zeroize(&mut kek);
    Ok(pb::EncryptionEnvelope {
        wrapped_key: wrapped?,
        salt: salt.to_vec(),
        kdf: KDF_ARGON2ID.into(),
        kdf_memory_kib: params.memory_kib,
        kdf_iterations: params.iterations,
        kdf_parallelism: params.parallelism,
    })
}

/// The data key in `env`, unwrapped with `secret` ([`CryptoError::WrongSecret`] if it does not).
fn unwrap(env: &pb::EncryptionEnvelope, secret: &[u8]) -> Result<[u8; KEY_LEN], CryptoError> {
    if env.kdf != KDF_ARGON2ID {
        return Err(CryptoError::BadEnvelope(format!("key derivation {:?}, known: {KDF_ARGON2ID}", env.kdf)));
    }
    if env.salt.len() != SALT_LEN || env.wrapped_key.len() != KEY_LEN + SEAL_OVERHEAD {
        return Err(CryptoError::BadEnvelope(format!(
            "salt of {} bytes and wrapped key of {} bytes (want {SALT_LEN} and {})",
            env.salt.len(),
            env.wrapped_key.len(),
            KEY_LEN + SEAL_OVERHEAD
        )));
    }
    let p =
        KdfParams { memory_kib: env.kdf_memory_kib, iterations: env.kdf_iterations, parallelism: env.kdf_parallelism };
    let mut kek = wrapping_key(secret, &env.salt, p)?;
    let opened = gcm_open(&gcm_key(&kek), &envelope_aad(&env.salt, p), &env.wrapped_key);
    zeroize::Zeroize::zeroize(&mut kek);
    let mut plain = opened.map_err(|_| CryptoError::WrongSecret)?;
    let mut data = [0u8; KEY_LEN];
    data.copy_from_slice(&plain);
    zeroize::Zeroize::zeroize(&mut plain);
    Ok(data)
}

/// The envelope of the same data key under `new_secret` (a new salt; same parameters as before
/// unless `params` says otherwise). No object changes: the data key does not.
pub fn rewrap(
    env: &pb::EncryptionEnvelope,
    old_secret: &[u8],
    new_secret: &[u8],
    params: Option<KdfParams>,
) -> Result<pb::EncryptionEnvelope, CryptoError> {
    let mut data = unwrap(env, old_secret)?;
    let p = params.unwrap_or(KdfParams {
        memory_kib: env.kdf_memory_kib,
        iterations: env.kdf_iterations,
        parallelism: env.kdf_parallelism,
    });
    let out = wrap(&data, new_secret, p);
    zeroize::Zeroize::zeroize(&mut data);
    out
}

/// HKDF-SHA256 of the data key: `len` bytes for the purpose `info` names.
fn derive(data: &[u8], info: &[&[u8]], out: &mut [u8]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"stratusfs v1").extract(data);
    prk.expand(info, Len(out.len())).and_then(|okm| okm.fill(out)).expect("HKDF output within its limit");
}

impl VolumeKeys {
    /// Opens `env` with `secret` for the volume `volume_uuid` (whose uuid every data seal names).
    pub fn open(env: &pb::EncryptionEnvelope, secret: &[u8], volume_uuid: &str) -> Result<VolumeKeys, CryptoError> {
        let data = unwrap(env, secret)?;
        let mut names = [0u8; 64];
        derive(&data, &[b"names", volume_uuid.as_bytes()], &mut names);
        Ok(VolumeKeys { data, names, volume: volume_uuid.into() })
    }

    /// A short public name of the data key (for logs and `kubectl get`; reveals nothing of it).
    pub fn key_id(&self) -> String {
        let mut id = [0u8; 8];
        derive(&self.data, &[b"key id"], &mut id);
        hex::encode(id)
    }

    /// The subkey of one block object, or of one inode's values.
    fn subkey(&self, what: &[u8], id: u64) -> LessSafeKey {
        let mut k = [0u8; KEY_LEN];
        derive(&self.data, &[what, self.volume.as_bytes(), &id.to_le_bytes()], &mut k);
        let key = gcm_key(&k);
        zeroize::Zeroize::zeroize(&mut k);
        key
    }

    fn chunk_aad(&self, object: u64, index: u32) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.volume.len() + 12);
        aad.extend_from_slice(self.volume.as_bytes());
        aad.extend_from_slice(&object.to_le_bytes());
        aad.extend_from_slice(&index.to_le_bytes());
        aad
    }

    /// Chunk `index` (or the table, [`TABLE_INDEX`]) of block object `object`, stored bytes
    /// (already compressed) sealed: nonce ‖ ciphertext ‖ tag, [`SEAL_OVERHEAD`] bytes more.
    pub fn seal_chunk(&self, object: u64, index: u32, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        gcm_seal(&self.subkey(b"chunk", object), &self.chunk_aad(object, index), stored)
    }

    /// What [`VolumeKeys::seal_chunk`] sealed for the same object and index; anything else
    /// (a changed byte, a chunk from another object, index or volume) is [`CryptoError::Tampered`].
    pub fn open_chunk(&self, object: u64, index: u32, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        gcm_open(&self.subkey(b"chunk", object), &self.chunk_aad(object, index), sealed)
    }

    /// A name in directory `parent`, sealed deterministically: [`TAG_LEN`] bytes more, the same
    /// for the same name in the same directory, different in another.
    pub fn seal_name(&self, parent: u64, name: &[u8]) -> Vec<u8> {
        self.siv().encrypt([&parent.to_le_bytes()], name).expect("one header, any length of name")
    }

    /// The name [`VolumeKeys::seal_name`] sealed in `parent`, or [`CryptoError::Tampered`].
    pub fn open_name(&self, parent: u64, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.siv().decrypt([&parent.to_le_bytes()], sealed).map_err(|_| CryptoError::Tampered)
    }

    fn siv(&self) -> Aes256Siv {
        Aes256Siv::new(&self.names.into())
    }

    /// A value of inode `ino` (a symlink's target, a user xattr's value) that `what` names
    /// (`b"symlink"`, `b"xattr\0user.NAME"`): it opens only as that value of that inode.
    pub fn seal_value(&self, ino: u64, what: &[u8], value: &[u8]) -> Result<Vec<u8>, CryptoError> {
        gcm_seal(&self.subkey(b"value", ino), &[&ino.to_le_bytes()[..], what].concat(), value)
    }

    /// What [`VolumeKeys::seal_value`] sealed for the same inode and name.
    pub fn open_value(&self, ino: u64, what: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        gcm_open(&self.subkey(b"value", ino), &[&ino.to_le_bytes()[..], what].concat(), sealed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Cheap parameters for tests of everything but the cost itself.
    const FAST: KdfParams = KdfParams { memory_kib: 8 << 10, iterations: 1, parallelism: 1 };

    /// The keys of a new volume `volume` (cheap key derivation), for other modules' tests.
    pub(crate) fn keys(volume: &str) -> VolumeKeys {
        VolumeKeys::open(&create_envelope(b"s", FAST).unwrap(), b"s", volume).unwrap()
    }

    #[test]
    fn the_envelope_opens_with_its_secret_only_and_rekey_keeps_the_data_key() {
        let env = create_envelope(b"correct horse", FAST).unwrap();
        assert_eq!(env.kdf, KDF_ARGON2ID);
        assert_eq!((env.salt.len(), env.wrapped_key.len()), (SALT_LEN, KEY_LEN + SEAL_OVERHEAD));
        let keys = VolumeKeys::open(&env, b"correct horse", "vol-a").unwrap();
        assert_eq!(VolumeKeys::open(&env, b"wrong horse", "vol-a").unwrap_err(), CryptoError::WrongSecret);
        assert_eq!(VolumeKeys::open(&env, b"", "vol-a").unwrap_err(), CryptoError::EmptySecret);
        let sealed = keys.seal_chunk(7, 0, b"stored bytes").unwrap();

        let new = rewrap(&env, b"correct horse", b"battery staple", None).unwrap();
        assert_ne!(new.salt, env.salt, "a rekey draws a new salt");
        assert_eq!(VolumeKeys::open(&new, b"correct horse", "vol-a").unwrap_err(), CryptoError::WrongSecret);
        let again = VolumeKeys::open(&new, b"battery staple", "vol-a").unwrap();
        assert_eq!(again.key_id(), keys.key_id(), "the same data key");
        assert_eq!(again.open_chunk(7, 0, &sealed).unwrap(), b"stored bytes");
        assert_eq!(rewrap(&env, b"nope", b"x", None).unwrap_err(), CryptoError::WrongSecret);

        // Changed parameters (a server lowering the cost) or a foreign KDF do not open.
        let weaker = pb::EncryptionEnvelope { kdf_iterations: 2, ..env.clone() };
        assert_eq!(VolumeKeys::open(&weaker, b"correct horse", "vol-a").unwrap_err(), CryptoError::WrongSecret);
        let huge = pb::EncryptionEnvelope { kdf_memory_kib: u32::MAX, ..env.clone() };
        assert!(matches!(VolumeKeys::open(&huge, b"correct horse", "vol-a"), Err(CryptoError::BadEnvelope(_))));
        let other = pb::EncryptionEnvelope { kdf: "scrypt".into(), ..env };
        let e = VolumeKeys::open(&other, b"correct horse", "vol-a").unwrap_err();
        assert!(e.to_string().contains("scrypt"), "{e}");
    }

    #[test]
    fn the_default_cost_is_the_issues() {
        assert_eq!(KdfParams::default(), KdfParams { memory_kib: 65536, iterations: 3, parallelism: 4 });
        let start = std::time::Instant::now();
        let env = create_envelope(b"s", KdfParams::default()).unwrap();
        VolumeKeys::open(&env, b"s", "v").unwrap();
        eprintln!("Argon2id at the default cost, create and open: {:?}", start.elapsed());
    }

    #[test]
    fn a_sealed_chunk_opens_only_where_it_was_sealed() {
        let env = create_envelope(b"s", FAST).unwrap();
        let keys = VolumeKeys::open(&env, b"s", "vol-a").unwrap();
        let plain: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let sealed = keys.seal_chunk(42, 3, &plain).unwrap();
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        let windows: std::collections::HashSet<&[u8]> = plain.windows(16).collect();
        assert!(!sealed.windows(16).any(|w| windows.contains(w)), "a 16-byte window of the plaintext in the seal");
        assert_eq!(keys.open_chunk(42, 3, &sealed).unwrap(), plain);
        assert_ne!(keys.seal_chunk(42, 3, &plain).unwrap(), sealed, "random nonces: never the same bytes twice");
        // Moved to another index or object, or read as another volume's: refused.
        assert_eq!(keys.open_chunk(42, 4, &sealed).unwrap_err(), CryptoError::Tampered);
        assert_eq!(keys.open_chunk(43, 3, &sealed).unwrap_err(), CryptoError::Tampered);
        assert_eq!(keys.open_chunk(42, TABLE_INDEX, &sealed).unwrap_err(), CryptoError::Tampered);
        let other_volume = VolumeKeys::open(&env, b"s", "vol-b").unwrap();
        assert_eq!(other_volume.open_chunk(42, 3, &sealed).unwrap_err(), CryptoError::Tampered);
        // Any flipped byte, or a cut, is refused.
        for at in [0, NONCE_LEN, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 0x01;
            assert_eq!(keys.open_chunk(42, 3, &bad).unwrap_err(), CryptoError::Tampered, "flip at {at}");
        }
        assert_eq!(keys.open_chunk(42, 3, &sealed[..sealed.len() - 1]).unwrap_err(), CryptoError::Tampered);
        assert_eq!(keys.open_chunk(42, 3, &sealed[..5]).unwrap_err(), CryptoError::Tampered);
    }

    #[test]
    fn two_volumes_with_one_secret_have_different_keys() {
        let (a, b) = (create_envelope(b"same", FAST).unwrap(), create_envelope(b"same", FAST).unwrap());
        let (ka, kb) = (VolumeKeys::open(&a, b"same", "v1").unwrap(), VolumeKeys::open(&b, b"same", "v2").unwrap());
        assert_ne!(ka.key_id(), kb.key_id());
        assert_ne!(ka.seal_name(1, b"report.pdf"), kb.seal_name(1, b"report.pdf"));
        let sealed = ka.seal_chunk(1, 0, b"data").unwrap();
        assert_eq!(kb.open_chunk(1, 0, &sealed).unwrap_err(), CryptoError::Tampered);
    }

    #[test]
    fn names_are_deterministic_per_directory_and_fit_the_servers_limit() {
        let env = create_envelope(b"s", FAST).unwrap();
        let keys = VolumeKeys::open(&env, b"s", "v").unwrap();
        let n = keys.seal_name(5, b"hello.txt");
        assert_eq!(n, keys.seal_name(5, b"hello.txt"), "a lookup finds the name it created");
        assert_ne!(n, keys.seal_name(6, b"hello.txt"), "the same name elsewhere differs");
        assert_eq!(keys.open_name(5, &n).unwrap(), b"hello.txt");
        assert_eq!(keys.open_name(6, &n).unwrap_err(), CryptoError::Tampered, "moved to another directory");
        let long = [b'x'; 255];
        let sealed = keys.seal_name(1, &long);
        assert_eq!(sealed.len(), 255 + TAG_LEN, "the server's limit for encrypted names (271)");
        assert!(!sealed.windows(8).any(|w| w == b"xxxxxxxx"));
    }

    #[test]
    fn values_open_only_as_the_value_of_their_inode_and_name() {
        let env = create_envelope(b"s", FAST).unwrap();
        let keys = VolumeKeys::open(&env, b"s", "v").unwrap();
        let v = keys.seal_value(9, b"symlink", b"/secret/target").unwrap();
        assert_eq!(keys.open_value(9, b"symlink", &v).unwrap(), b"/secret/target");
        assert_eq!(keys.open_value(10, b"symlink", &v).unwrap_err(), CryptoError::Tampered);
        assert_eq!(keys.open_value(9, b"xattr\0user.a", &v).unwrap_err(), CryptoError::Tampered);
    }
}
