//! The metadata database: the schema, typed access inside a transaction, a volume's database and
//! its one writer.

pub mod replay;
pub mod schema;
pub mod tx;
pub mod volume;
pub mod writer;
