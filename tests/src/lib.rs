//! Test support: an in-process vhost-user frontend and QEMU guest helpers.
