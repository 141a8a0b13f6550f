//! Pure switching logic for vhost-net-backend: frames in, actions out.
#![forbid(unsafe_code)]
