//! The aws-lc calls behind [`crate::Xts`]: one `EVP_CIPHER_CTX` per direction, owned
//! here and freed on drop. This module and `libtpms`'s `ffi` are the only ones in
//! opencvm with `unsafe` code; each block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::c_int;
use std::ptr;

use aws_lc_sys::{
    EVP_CIPHER_CTX, EVP_CIPHER_CTX_free, EVP_CIPHER_CTX_new, EVP_CipherInit_ex, EVP_CipherUpdate,
    EVP_aes_256_xts,
};

use crate::{Error, KEY_LEN};

/// An owned `EVP_CIPHER_CTX` keyed for AES-256-XTS in one direction.
pub(crate) struct CipherCtx(ptr::NonNull<EVP_CIPHER_CTX>);

impl CipherCtx {
    /// A context keyed with `key`, encrypting if `encrypt`.
    pub(crate) fn new(key: &[u8; KEY_LEN], encrypt: bool) -> Result<Self, Error> {
        // SAFETY: EVP_CIPHER_CTX_new takes no arguments and returns an initialised
        // context or NULL, which is checked.
        let raw = unsafe { EVP_CIPHER_CTX_new() };
        let ctx = Self(ptr::NonNull::new(raw).ok_or(Error::Backend("a cipher context"))?);
        // SAFETY: the context is live and owned by `ctx`; EVP_aes_256_xts returns a
        // static cipher; `key` points to the 64 bytes that cipher's key length is,
        // and aws-lc copies it into the context's key schedule before returning.
        let ok = unsafe {
            EVP_CipherInit_ex(
                ctx.0.as_ptr(),
                EVP_aes_256_xts(),
                ptr::null_mut(),
                key.as_ptr(),
                ptr::null(),
                c_int::from(encrypt),
            )
        };
        if ok != 1 {
            // The only refusal for a 64-byte key is equal halves, checked before.
            return Err(Error::Backend("the AES-XTS key"));
        }
        Ok(ctx)
    }

    /// Runs one data unit through the cipher, in place, with tweak `iv`.
    pub(crate) fn unit(&mut self, iv: &[u8; 16], data: &mut [u8]) -> Result<(), Error> {
        let len = c_int::try_from(data.len()).map_err(|_| Error::UnitSize(data.len()))?;
        // SAFETY: the context is live and keyed; a NULL cipher and key with a
        // 16-byte IV (the cipher's IV length) only sets the tweak; -1 keeps the
        // direction.
        let ok = unsafe {
            EVP_CipherInit_ex(
                self.0.as_ptr(),
                ptr::null(),
                ptr::null_mut(),
                ptr::null(),
                iv.as_ptr(),
                -1,
            )
        };
        if ok != 1 {
            return Err(Error::Backend("an XTS tweak"));
        }
        let mut out_len: c_int = 0;
        let p = data.as_mut_ptr();
        // SAFETY: `p` points to `len` writable and readable bytes; aws-lc's XTS code
        // allows the output to be exactly the input (in place); it writes `len`
        // bytes (XTS with a block size of 1 buffers nothing) and `out_len`.
        let ok = unsafe { EVP_CipherUpdate(self.0.as_ptr(), p, &mut out_len, p.cast_const(), len) };
        if ok != 1 || out_len != len {
            return Err(Error::Backend("an XTS data unit"));
        }
        Ok(())
    }
}

impl Drop for CipherCtx {
    fn drop(&mut self) {
        // SAFETY: the context is owned by this value and freed once; aws-lc's
        // cleanup wipes the key schedule before freeing it.
        unsafe { EVP_CIPHER_CTX_free(self.0.as_ptr()) }
    }
}

// SAFETY: an EVP_CIPHER_CTX holds no thread-affine state; it may move between
// threads as long as one thread uses it at a time, which `&mut self` ensures.
unsafe impl Send for CipherCtx {}
