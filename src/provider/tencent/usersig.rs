//! UserSig (TLSSigAPIv2), the HMAC token Tencent's REST API takes in its query string
//! (`shared/providers/tencent.md` §2). The client signs with it; the sandbox emulator verifies
//! it with the same code, so both sides agree on one definition.

use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// The fields a UserSig carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub identifier: String,
    pub sdk_app_id: u64,
    /// Issue time, unix seconds.
    pub time: u64,
    /// Lifetime in seconds from `time`.
    pub expire: u64,
    /// `TLS.sig`: standard base64 of the HMAC.
    pub sig: String,
}

/// `TLS.sig`: standard base64 of HMAC-SHA256 over the content lines. The console's 64-hex-char
/// key is used as text, not hex-decoded (§2 step 2).
pub fn signature(key: &str, identifier: &str, sdk_app_id: u64, time: u64, expire: u64) -> String {
    let content = format!(
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdk_app_id}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    );
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(content.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// A fresh UserSig for `identifier`, issued at `time` and valid for `expire` seconds.
pub fn generate(key: &str, identifier: &str, sdk_app_id: u64, time: u64, expire: u64) -> String {
    let doc = json!({
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdk_app_id,
        "TLS.expire": expire,
        "TLS.time": time,
        "TLS.sig": signature(key, identifier, sdk_app_id, time, expire),
    });
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    z.write_all(doc.to_string().as_bytes())
        .expect("in-memory write");
    let packed = z.finish().expect("in-memory write");
    to_url_variant(&STANDARD.encode(packed))
}

/// Tencent's own URL-safe alphabet: `+`→`*`, `/`→`-`, `=`→`_` (only on the outer layer).
fn to_url_variant(b64: &str) -> String {
    b64.chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            c => c,
        })
        .collect()
}

/// Decode a UserSig into its claims, without checking the signature. `Err` says why it cannot
/// be read (never echoes the input).
pub fn decode(usersig: &str) -> Result<Claims, &'static str> {
    let b64: String = usersig
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect();
    let packed = STANDARD.decode(b64).map_err(|_| "not base64")?;
    let mut text = String::new();
    flate2::read::ZlibDecoder::new(packed.as_slice())
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|_| "not zlib-compressed JSON")?;
    let v: Value = serde_json::from_str(&text).map_err(|_| "not JSON")?;
    let num = |k: &str| -> Result<u64, &'static str> {
        match &v[k] {
            Value::Number(n) => n.as_u64().ok_or("a field is not a whole number"),
            Value::String(s) => s.parse().map_err(|_| "a field is not a whole number"),
            _ => Err("a field is missing"),
        }
    };
    let string = |k: &str| -> Result<String, &'static str> {
        v[k].as_str().map(String::from).ok_or("a field is missing")
    };
    Ok(Claims {
        identifier: string("TLS.identifier")?,
        sdk_app_id: num("TLS.sdkappid")?,
        time: num("TLS.time")?,
        expire: num("TLS.expire")?,
        sig: string("TLS.sig")?,
    })
}

/// Whether the claims were signed with `key` (constant-time comparison of the HMAC).
pub fn verify(claims: &Claims, key: &str) -> bool {
    let Ok(given) = STANDARD.decode(&claims.sig) else {
        return false;
    };
    let content = format!(
        "TLS.identifier:{}\nTLS.sdkappid:{}\nTLS.time:{}\nTLS.expire:{}\n",
        claims.identifier, claims.sdk_app_id, claims.time, claims.expire
    );
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(content.as_bytes());
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The reference's test vector (tencent.md §2), built on Tencent's public sample key.
    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";
    const SIG: &str = "yLAe+w7WUeUuqbV9h/TX78u21oTGi+i9Zp1u3PpnY60=";
    const PYPI_USERSIG: &str = "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkElNyM-Myi0uKEkvyi2BKilOyEwsKMlOACgxNDKAAKpdaUZBZlAqUsTAzgQuWZOaChAzN0RQXZ6aDLKn0cUzVLjcPD00NLS1MCrPM0A*JMLcoNTLMD3HP1M60jCowLDUOKMiLNDOwVaoFAD4PNPI_";

    #[test]
    fn tencent_usersig_signature_matches_the_reference_vector() {
        assert_eq!(
            signature(KEY, "administrator", 1_400_000_000, 1_700_000_000, 86_400),
            SIG
        );
    }

    #[test]
    fn tencent_usersig_decodes_to_the_reference_claims_and_verifies() {
        let ours = decode(&generate(
            KEY,
            "administrator",
            1_400_000_000,
            1_700_000_000,
            86_400,
        ))
        .unwrap();
        let theirs = decode(PYPI_USERSIG).unwrap();
        // Key order, spacing and compression level differ; the decoded claims may not.
        assert_eq!(ours, theirs);
        assert_eq!(ours.sig, SIG);
        assert!(verify(&ours, KEY));
        assert!(!verify(&ours, "another key"));
        let mut forged = ours.clone();
        forged.expire += 1;
        assert!(!verify(&forged, KEY));
    }

    #[test]
    fn tencent_usersig_uses_tencents_url_alphabet() {
        let s = generate(KEY, "administrator", 1_400_000_000, 1_700_000_000, 86_400);
        assert!(!s.contains(['+', '/', '=']), "{s}");
        assert!(decode("!!!").is_err());
        assert!(decode("eJyrVgrxCdYrSy1SslJQ").is_err());
    }
}
