//! swtpm test TPM (being built).
