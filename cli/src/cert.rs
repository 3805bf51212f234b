//! `qm cert ca|node|client`: a cluster CA and the certificates it issues, for development
//! and small clusters (production operators bring their own CA). Keys are written 0600.
//!
//! Node certificates name the node's hosts (for clients dialing it) and `node-<id>.peer.qm`
//! (for its peers: the Raft RPCs need that name); client certificates name a principal and
//! never a node.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::json;

use crate::config::write_secret_file;
use crate::reserve::emit;
use crate::{Failure, Output};

/// Validity of a CA certificate and of an issued one, in days.
const CA_DAYS: i64 = 3650;
const LEAF_DAYS_DEFAULT: u32 = 365;
const LEAF_DAYS_MAX: u32 = 3650;
/// Most host names on one node certificate.
const HOSTS_MAX: usize = 16;

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Make a cluster CA in DIR (ca.pem, ca.key 0600, ca.name).
    #[command(after_help = "A three-node TLS cluster:\n  \
        qm cert ca --dir certs\n  \
        qm cert node --dir certs --id 1 --host 10.0.0.1   (and ids 2, 3 with their hosts)\n  \
        qm cert client --dir certs --name ops\n\
        Then: qm coordinator run --tls-cert certs/node-1.pem --tls-key certs/node-1.key --tls-ca certs/ca.pem ...")]
    Ca {
        /// Where to write the files.
        #[arg(long)]
        dir: PathBuf,
        /// The cluster's name, in the CA's subject.
        #[arg(long, default_value = "qm")]
        name: String,
    },
    /// Issue a coordinator node's certificate (node-ID.pem, node-ID.key) from DIR's CA.
    Node {
        /// The directory holding the CA (ca.pem, ca.key); the certificate is written there
        #[arg(long)]
        dir: PathBuf,
        /// The node's Raft id.
        #[arg(long)]
        id: u64,
        /// A host name or IP address clients and peers dial this node at (repeatable).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Days the certificate is valid
        #[arg(long, default_value_t = LEAF_DAYS_DEFAULT)]
        days: u32,
    },
    /// Issue a client or worker certificate (client-NAME.pem, client-NAME.key) from DIR's CA.
    Client {
        /// The directory holding the CA (ca.pem, ca.key); the certificate is written there
        #[arg(long)]
        dir: PathBuf,
        /// The principal's name, in the certificate's subject.
        #[arg(long)]
        name: String,
        /// Days the certificate is valid
        #[arg(long, default_value_t = LEAF_DAYS_DEFAULT)]
        days: u32,
    },
}

fn fail(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::error(format!("{what}: {e}"))
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Quartermaster CA {name}"));
    dn.push(DnType::OrganizationName, "Quartermaster");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), Failure> {
    let r = if secret { write_secret_file(path, text.trim_end()) } else { std::fs::write(path, text) };
    r.map_err(|e| fail(&path.display().to_string(), e))
}

/// The CA in `dir`, as an issuer.
fn issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, Failure> {
    let key_path = dir.join("ca.key");
    let key = std::fs::read_to_string(&key_path).map_err(|e| fail(&key_path.display().to_string(), e))?;
    let key = KeyPair::from_pem(&key).map_err(|e| fail(&key_path.display().to_string(), e))?;
    let name_path = dir.join("ca.name");
    let name = std::fs::read_to_string(&name_path).map_err(|e| fail(&name_path.display().to_string(), e))?;
    Ok(Issuer::new(ca_params(name.trim()), key))
}

fn check_days(days: u32) -> Result<i64, Failure> {
    if !(1..=LEAF_DAYS_MAX).contains(&days) {
        return Err(Failure::usage(format!("--days {days}: must be within 1..={LEAF_DAYS_MAX}")));
    }
    Ok(i64::from(days))
}

/// Issues a leaf certificate with `params` into `dir/<stem>.pem` and `.key`.
fn issue(dir: &Path, stem: &str, mut params: CertificateParams, days: i64) -> Result<(PathBuf, PathBuf), Failure> {
    let issuer = issuer(dir)?;
    validity(&mut params, days);
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(|e| fail("generating a key", e))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| fail("signing", e))?;
    let (cert_path, key_path) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok((cert_path, key_path))
}

/// `qm cert …`.
pub fn dispatch(command: CertCommand, output: Output) -> Result<(), Failure> {
    match command {
        CertCommand::Ca { dir, name } => {
            qm_shared::validate::check_name("--name", &name, 64).map_err(|e| Failure::usage(e.to_string()))?;
            std::fs::create_dir_all(&dir).map_err(|e| fail(&dir.display().to_string(), e))?;
            if dir.join("ca.key").exists() {
                return Err(Failure::usage(format!(
                    "{} already holds a CA (ca.key); refusing to replace it",
                    dir.display()
                )));
            }
            let mut params = ca_params(&name);
            validity(&mut params, CA_DAYS);
            let key = KeyPair::generate().map_err(|e| fail("generating a key", e))?;
            let cert = params.self_signed(&key).map_err(|e| fail("signing", e))?;
            write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
            write(&dir.join("ca.pem"), &cert.pem(), false)?;
            write(&dir.join("ca.name"), &name, false)?;
            let ca = dir.join("ca.pem");
            emit(output, &json!({"ca": ca}), &format!("CA {name:?}: {} (its key: ca.key, 0600)\n", ca.display()));
            Ok(())
        }
        CertCommand::Node { dir, id, hosts, days } => {
            let days = check_days(days)?;
            if id == 0 || hosts.len() > HOSTS_MAX {
                return Err(Failure::usage(format!("--id must be 1 or more and --host given 1..={HOSTS_MAX} times")));
            }
            let mut sans = vec![SanType::DnsName(
                qm_coordinator::tls::node_dns_name(id).try_into().map_err(|e| fail("node name", e))?,
            )];
            for h in &hosts {
                sans.push(match h.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        h.clone().try_into().map_err(|e| Failure::usage(format!("--host {h:?}: {e}")))?,
                    ),
                });
            }
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, format!("qm node {id}"));
            params.subject_alt_names = sans;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
            let (cert, key) = issue(&dir, &format!("node-{id}"), params, days)?;
            emit(
                output,
                &json!({"cert": cert, "key": key}),
                &format!("node {id}: {} and {}\n", cert.display(), key.display()),
            );
            Ok(())
        }
        CertCommand::Client { dir, name, days } => {
            let days = check_days(days)?;
            qm_shared::validate::check_name("--name", &name, 64).map_err(|e| Failure::usage(e.to_string()))?;
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, name.clone());
            // The name a coordinator takes the principal from.
            let dns = format!("{name}.client.qm");
            let dns = dns
                .try_into()
                .map_err(|e| Failure::usage(format!("--name {name:?}: not usable in a DNS name: {e}")))?;
            params.subject_alt_names = vec![SanType::DnsName(dns)];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let (cert, key) = issue(&dir, &format!("client-{name}"), params, days)?;
            emit(
                output,
                &json!({"cert": cert, "key": key}),
                &format!("{name}: {} and {}\n", cert.display(), key.display()),
            );
            Ok(())
        }
    }
}
