//! The Signal protocol and OMEMO, sans-I/O: written from the public specifications (X3DH,
//! Double Ratchet, XEdDSA, XEP-0384, XEP-0454) and wire-compatible with libsignal's version 3
//! format and the OMEMO clients in the field. No networking, no clock, an injectable RNG.
#![forbid(unsafe_code)]

pub mod cipher;
pub mod device;
pub mod error;
pub mod fingerprint;
pub mod kdf;
pub mod keys;
pub mod media;
pub mod message;
pub mod omemo;
pub mod omemo2;
pub mod prekeys;
pub mod proto;
pub mod ratchet;
pub mod session;
pub mod store;
pub mod x3dh;
pub mod xeddsa;
