//! FUSE: the kernel ABI ([`abi`]), our session layer ([`session`]: INIT, reader threads,
//! interrupts, adoption of a live connection), mount(2) ([`mount`]), and the adapter that turns
//! requests into calls of the filesystem ([`adapter`]).

pub mod abi;
pub mod adapter;
pub mod mount;
pub mod session;
