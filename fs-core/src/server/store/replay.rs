//! Replies kept against retries: a change made under a request number (`Context.request`) writes
//! its result, in the same transaction, under (session, request). The same request again (a client
//! that lost the connection before the reply came and sent it once more) finds it and is answered
//! with it instead of being applied a second time. Because the record and the change commit
//! together, one survives a crash exactly when the other does: a retry after a server restart is
//! applied once too. Records older than [`KEEP`] are deleted ([`sweep`]); a client retries for at
//! most its `meta_wait` (60 s by default).

use prost::Message;

use crate::server::access::Caller;
use crate::server::data::Created;
use crate::server::store::tx::W;
use crate::wire::error::{MetaError, MetaResult};
use crate::wire::{pb, rec};

/// How long a reply is kept for a retry.
pub const KEEP: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// The result of a change, as kept for a retry.
pub trait Replay: Sized {
    fn save(&self, out: &mut Vec<u8>);
    fn load(b: &[u8]) -> MetaResult<Self>;
}

/// Length-delimited prost messages, one after another.
fn put(out: &mut Vec<u8>, m: &impl Message) {
    m.encode_length_delimited(out).expect("a Vec grows");
}

fn take<M: Message + Default>(b: &mut &[u8]) -> MetaResult<M> {
    Ok(M::decode_length_delimited(b)?)
}

impl Replay for () {
    fn save(&self, _: &mut Vec<u8>) {}
    fn load(_: &[u8]) -> MetaResult<()> {
        Ok(())
    }
}

impl Replay for rec::Inode {
    fn save(&self, out: &mut Vec<u8>) {
        put(out, self);
    }
    fn load(mut b: &[u8]) -> MetaResult<Self> {
        take(&mut b)
    }
}

impl Replay for (u64, rec::Inode) {
    fn save(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.to_le_bytes());
        put(out, &self.1);
    }
    fn load(b: &[u8]) -> MetaResult<Self> {
        let (n, mut rest) = b.split_at_checked(8).ok_or_else(short)?;
        Ok((u64::from_le_bytes(n.try_into().expect("8 bytes")), take(&mut rest)?))
    }
}

impl Replay for Created {
    fn save(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.open_id.to_le_bytes());
        out.push(self.created as u8);
        put(out, &self.inode);
    }
    fn load(b: &[u8]) -> MetaResult<Self> {
        let (head, mut rest) = b.split_at_checked(9).ok_or_else(short)?;
        let open_id = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        Ok(Created { open_id, created: head[8] != 0, inode: take(&mut rest)? })
    }
}

impl Replay for (rec::Inode, Vec<pb::BlockRef>) {
    fn save(&self, out: &mut Vec<u8>) {
        put(out, &self.0);
        for b in &self.1 {
            put(out, b);
        }
    }
    fn load(mut b: &[u8]) -> MetaResult<Self> {
        let inode = take(&mut b)?;
        let mut blocks = Vec::new();
        while !b.is_empty() {
            blocks.push(take(&mut b)?);
        }
        Ok((inode, blocks))
    }
}

fn short() -> MetaError {
    MetaError::Internal("a kept reply is shorter than its format".into())
}

fn key(c: &Caller) -> Option<Vec<u8>> {
    (c.request != 0).then(|| [&c.session[..], &c.request.to_be_bytes()].concat())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The result this request had when it was applied before, if it was.
pub fn replayed<R: Replay>(w: &W, c: &Caller) -> MetaResult<Option<R>> {
    let Some(k) = key(c) else { return Ok(None) };
    let Some(v) = redb::ReadableTable::get(&w.replies, k.as_slice())? else { return Ok(None) };
    let v = v.value();
    tracing::info!(request = c.request, "a retried request was applied before; answering with its reply");
    R::load(v.get(8..).ok_or_else(short)?).map(Some)
}

/// Keeps `r`, the result of this request's change, in the change's transaction.
pub fn keep<R: Replay>(w: &mut W, c: &Caller, r: &R) -> MetaResult<()> {
    let Some(k) = key(c) else { return Ok(()) };
    let mut v = now_ms().to_le_bytes().to_vec();
    r.save(&mut v);
    w.replies.insert(k.as_slice(), v.as_slice())?;
    Ok(())
}

/// Deletes the replies kept longer than [`KEEP`]; returns how many.
pub fn sweep(w: &mut W) -> MetaResult<u64> {
    let cutoff = now_ms().saturating_sub(KEEP.as_millis() as u64);
    let mut n = 0;
    w.replies.retain(|_, v| {
        let at = v.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        let keep = at >= cutoff;
        n += u64::from(!keep);
        keep
    })?;
    Ok(n)
}
