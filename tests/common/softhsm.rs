//! SoftHSM2 test token (being built).
