//! What marks a secret, for every protocol. By name: query and form keys, JSON keys and `X-` header
//! names in HTTP, column names in SQL — one list, so that a field redacted in a request body is
//! also redacted when the same application writes it to its database. By the value's own shape,
//! whatever names it (a JWT, a vendor's API key, a PEM private key): [`shapes`].

pub(crate) mod shapes;
#[cfg(test)]
pub(crate) mod tests;

/// Parts of names that mark their values secret, compared without case, by their first letter.
fn secret_parts(first: u8) -> &'static [&'static [u8]] {
    match first {
        b'a' => &[
            b"apikey",
            b"api_key",
            b"api-key",
            b"access_key",
            b"access-key",
            b"authorization",
            b"auth-key",
        ],
        b'c' => &[b"credential"],
        b'p' => &[b"password", b"passwd", b"private_key", b"private-key"],
        b's' => &[b"secret", b"session"],
        b't' => &[b"token"],
        _ => &[],
    }
}

/// Does a value under this name hold a secret? No allocation: this runs for every key of a
/// redacted query string, form or JSON body, and for `X-` header names.
pub(crate) fn secret_name(name: &[u8]) -> bool {
    (0..name.len()).any(|i| {
        // ASCII letters to lower case; no other byte becomes one of the letters matched.
        secret_parts(name[i] | 0x20).iter().any(|part| {
            name.get(i..i + part.len())
                .is_some_and(|at| at.eq_ignore_ascii_case(part))
        })
    })
}

/// Is parameter `index` (from 0) among the `secret` parameter numbers (from 1, ascending, as the
/// SQL scanner lists the placeholders bound to a credential)?
pub(crate) fn secret_param(secret: &[u32], index: usize) -> bool {
    secret.binary_search(&(index as u32 + 1)).is_ok()
}
