//! The tcpserver stage, quill-tcpserver (doc/quill-tcpserver.8): `server` (the options, the
//! accept loop, the `-h` name lookup), `listener` (the listening socket, UCSPI-TCP addresses,
//! the privilege drop, the connection table) and `tcprules` (doc/tcprules.5). Generic TCP
//! code: it knows nothing about mail (its main reads `control/me` for TCPLOCALHOST).
#![forbid(unsafe_code)]

pub mod linked;
pub mod listener;
pub mod server;
pub mod tcprules;
