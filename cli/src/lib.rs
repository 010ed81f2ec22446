//! The `runway` command's library: the local all-in-one ([`dev`]), shared by the binary and the
//! end-to-end tests, the HTTP client commands ([`client`]), their tables ([`table`]) and the
//! exit codes every command shares ([`exit`]).

pub mod bench;
pub mod client;
pub mod dev;
pub mod exit;
pub mod table;
