//! Training data: raw sources → records ([`sources`]), records → token sequences with loss
//! masks ([`document`]), Parquet token shards with a manifest, splits and packing
//! ([`shards`]), and the resumable batch loader ([`loader`]).

pub mod document;
pub mod loader;
pub mod shards;
pub mod sources;
