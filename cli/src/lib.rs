//! The `runway` command's library: the local all-in-one ([`dev`]), shared by the binary and the
//! end-to-end tests.

pub mod dev;
