//! The `runway` command's library: the local all-in-one ([`dev`]), shared by the binary and the
//! end-to-end tests, and the HTTP client commands ([`client`]).

pub mod bench;
pub mod client;
pub mod dev;
