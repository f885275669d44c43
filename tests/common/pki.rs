//! Test certificates made on the fly with rcgen: a CA, a server certificate for 127.0.0.1 /
//! localhost, and a client certificate, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files of one test PKI.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write PEM");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

/// Generates a CA named `name` with a server and a client certificate under `dir`.
pub fn generate(dir: &Path, name: &str) -> Pki {
    std::fs::create_dir_all(dir).expect("pki dir");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("self-signed CA");

    let server_key = KeyPair::generate().expect("server key");
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server_params
        .signed_by(&server_key, &ca)
        .expect("server certificate");

    let client_key = KeyPair::generate().expect("client key");
    let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "bp01-gw1");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params
        .signed_by(&client_key, &ca)
        .expect("client certificate");

    let pki = Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    std::fs::write(&pki.ca, ca.pem()).expect("write CA");
    std::fs::write(&pki.server_cert, server.pem()).expect("write server cert");
    write_private(&pki.server_key, &server_key.serialize_pem());
    std::fs::write(&pki.client_cert, client.pem()).expect("write client cert");
    write_private(&pki.client_key, &client_key.serialize_pem());
    pki
}

/// mosquitto.conf lines for a TLS listener on `port` with this PKI's server certificate.
pub fn listener(pki: &Pki, port: u16, require_client_cert: bool) -> String {
    format!(
        "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
        pki.ca.display(),
        pki.server_cert.display(),
        pki.server_key.display(),
        require_client_cert
    )
}
