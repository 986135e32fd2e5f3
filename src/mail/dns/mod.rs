//! DNS for quill-remote and quill-smtpd (DNS blocklists, SPF), a small synchronous stub resolver: `wire` (the message format, encoder
//! and decoder side by side) and `resolver` (servers, timeouts, queries, CNAMEs, the lookup
//! budget). What the rest of Quill uses is named here.
#![forbid(unsafe_code)]

pub mod resolver;
pub mod wire;

pub use resolver::{
    parse_server, random_bytes, random_u16, Answer, DnsError, Resolver, LOOKUP_TIME, MAX_CNAMES, MAX_QUERIES,
};
pub use wire::{
    decode, encode_message, encode_query, is_host_name, Data, Message, Record, WireError, CLASS_IN, EDNS_BUFFER,
    MAX_NAME, RCODE_FORMERR, RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_REFUSED, RCODE_SERVFAIL, TYPE_A, TYPE_AAAA,
    TYPE_CNAME, TYPE_MX, TYPE_OPT, TYPE_PTR, TYPE_SOA, TYPE_TXT,
};
