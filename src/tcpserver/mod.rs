//! The tcpserver stage, quill-tcpserver (doc/quill-tcpserver.8): `listener` (the listening
//! socket, UCSPI-TCP addresses, the privilege drop, the connection table) and `tcprules`
//! (doc/tcprules.5). Generic TCP code: it knows nothing about mail.
#![forbid(unsafe_code)]

pub mod listener;
pub mod tcprules;
