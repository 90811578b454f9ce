# SHA-256 from OpenSSL's libcrypto, for the modules that link it
# (included, as one declaration, by assemble.pyx and digests.pyx).

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_MD:
        pass
    const EVP_MD* EVP_sha256()
    int EVP_Digest(const void* data, size_t count, unsigned char* digest,
                   unsigned int* size, const EVP_MD* kind, void* engine)
