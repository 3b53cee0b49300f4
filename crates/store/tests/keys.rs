//! API keys against real databases (SQLite and Postgres): created and shown once, stored hashed,
//! authenticated, listed without their secrets, revoked at once.

// Helpers outside `#[test]` functions are test code too.
#![allow(clippy::unwrap_used)]

use chorus_core::Tenant;
use chorus_core::auth::{Scope, Scopes};
use chorus_core::fair::Band;
use chorus_store::entity::api_keys;
use chorus_store::{KeyLimits, Store};
use chorus_testkit::database::{Backend, TestDatabase};
use sea_orm::EntityTrait;
use secrecy::{ExposeSecret, SecretString};

chorus_testkit::on_both_backends!(
    keys_authenticate_until_revoked,
    keys_are_stored_hashed_and_listed_without_secrets
);

async fn store(backend: Backend) -> Option<(TestDatabase, Store)> {
    let db = TestDatabase::new(backend)?;
    let store = Store::connect(db.url(), 4).await.unwrap();
    store.migrate().await.unwrap();
    Some((db, store))
}

async fn keys_authenticate_until_revoked(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = Tenant::new("acme").unwrap();
    let scopes = Scopes::of(&[Scope::Submit, Scope::Read]);
    let created = store
        .create_key(
            &acme,
            "ci",
            scopes,
            KeyLimits {
                rpm: Some(120),
                max_band: Band::Standard,
            },
        )
        .await
        .unwrap();
    let key = created.key.expose_secret().to_owned();
    let secret = key
        .strip_prefix(&format!("chorus_{}_", created.info.id))
        .unwrap();
    assert_eq!(secret.len(), 43, "256 bits, base64url without padding");

    let caller = store.authenticate(&created.key).await.unwrap().unwrap();
    assert_eq!(caller.tenant, acme);
    assert_eq!(caller.scopes, scopes);
    assert_eq!(caller.rpm, Some(120));
    assert_eq!(caller.max_band, Band::Standard);
    assert_eq!(caller.key_id.as_deref(), Some(created.info.id.as_str()));

    // A changed secret, an unknown id and junk are all just "no".
    let mut tampered = key.clone();
    tampered.pop();
    tampered.push(if key.ends_with('A') { 'B' } else { 'A' });
    for presented in [
        tampered,
        format!("chorus_{}_{}", "0".repeat(16), "x".repeat(43)),
        "Bearer nonsense".into(),
        String::new(),
    ] {
        let presented = SecretString::from(presented);
        assert_eq!(store.authenticate(&presented).await.unwrap(), None);
    }

    let revoked = store.revoke_key(&created.info.id).await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_eq!(
        store.authenticate(&created.key).await.unwrap(),
        None,
        "revoked at once"
    );
    let again = store.revoke_key(&created.info.id).await.unwrap().unwrap();
    assert_eq!(
        again.revoked_at, revoked.revoked_at,
        "revoking twice changes nothing"
    );
    assert_eq!(store.revoke_key("0000000000000000").await.unwrap(), None);
}

async fn keys_are_stored_hashed_and_listed_without_secrets(backend: Backend) {
    let Some((_db, store)) = store(backend).await else {
        return;
    };
    let acme = Tenant::new("acme").unwrap();
    let beta = Tenant::new("beta").unwrap();
    let first = store
        .create_key(&acme, "one", Scopes::EVERY, KeyLimits::default())
        .await
        .unwrap();
    store
        .create_key(
            &acme,
            "two",
            Scopes::of(&[Scope::Read]),
            KeyLimits::default(),
        )
        .await
        .unwrap();
    store
        .create_key(
            &beta,
            "other",
            Scopes::of(&[Scope::Submit]),
            KeyLimits::default(),
        )
        .await
        .unwrap();
    assert!(
        store
            .create_key(&acme, "none", Scopes::default(), KeyLimits::default())
            .await
            .is_err()
    );

    let rows = api_keys::Entity::find()
        .all(store.connection())
        .await
        .unwrap();
    let key = first.key.expose_secret();
    let secret_part = &key[key.len() - 43..];
    for row in &rows {
        assert_eq!(row.secret_sha256.len(), 32);
        assert!(
            !String::from_utf8_lossy(&row.secret_sha256).contains(secret_part),
            "only the digest is stored"
        );
    }
    let names = |keys: Vec<chorus_store::KeyInfo>| -> Vec<String> {
        keys.into_iter().map(|k| k.name).collect()
    };
    assert_eq!(
        names(store.list_keys(Some(&acme)).await.unwrap()),
        ["one", "two"]
    );
    assert_eq!(
        names(store.list_keys(Some(&beta)).await.unwrap()),
        ["other"]
    );
    assert_eq!(store.list_keys(None).await.unwrap().len(), 3);
    let listed = serde_json::to_string(&store.list_keys(None).await.unwrap()).unwrap();
    assert!(!listed.contains(secret_part));
}
