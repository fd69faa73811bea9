//! A child the operator created is handed to its server-side apply.
//!
//! A child that does not exist yet is created (POST), not applied: the apiserver takes longer
//! to create an object from a server-side apply than from a plain create of the same object
//! (the worker Deployment: 5.8 ms against 4.2 ms mean, docs/benchmarks.md part 4a), and those
//! requests lie on the path of every new resource's first pod. A create records the
//! operator's fields under an `Update` entry of `metadata.managedFields` (manager
//! [`MANAGER`], operation `Update`), and server-side apply keeps an entry of its own
//! (operation `Apply`): a field the operator's apply no longer sets would still be owned by
//! the `Update` entry, and stay. So when an apply's answer still shows that entry (the
//! child's first apply after its create, or after a hand-over that did not finish), the
//! fields are handed over, as `kubectl` upgrades client-side applied objects (`csaupgrade`):
//! a JSON patch of `metadata.managedFields` that merges the `Update` entry's fields into the
//! `Apply` entry and removes it (or renames it to `Apply` where there is none), and the apply
//! is sent again, which then removes what it no longer sets. A child created and never
//! changed costs one request, where handing it over at once would cost two. The patch tests
//! the entries it changes, by position: a change of anyone else's entry between the answer
//! and the patch does not matter; one that moves ours fails the patch, which is then made
//! again from a fresh answer.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::debug;

use crate::MANAGER;
use crate::controller::Child;
use crate::error::{Error, Result};

const APPLY: &str = "Apply";
const UPDATE: &str = "Update";

/// Attempts of a hand-over whose patch finds the entries moved.
const ATTEMPTS: usize = 3;

/// The operator's own entry of `operation`, on the object itself (not a subresource).
fn ours(entry: &ManagedFieldsEntry, operation: &str) -> bool {
    entry.manager.as_deref() == Some(MANAGER)
        && entry.operation.as_deref() == Some(operation)
        && entry.subresource.as_deref().unwrap_or_default().is_empty()
}

/// Adds the field set `more` to `fields` (both `FieldsV1` trees: objects whose leaves are
/// empty objects).
fn union(fields: &mut Value, more: &Value) {
    match (fields, more) {
        (Value::Object(fields), Value::Object(more)) => {
            for (key, value) in more {
                match fields.get_mut(key) {
                    Some(existing) => union(existing, value),
                    None => {
                        fields.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (fields, more) => *fields = more.clone(),
    }
}

/// The JSON patch that hands the operator's `Update` entry in `meta.managedFields` to its
/// `Apply` entry; `None` when it has no `Update` entry.
fn handover_patch(meta: &ObjectMeta) -> Option<Value> {
    let entries = meta.managed_fields.as_deref()?;
    let update = entries.iter().position(|e| ours(e, UPDATE))?;
    let at = |i: usize, field: &str| format!("/metadata/managedFields/{i}/{field}");
    let test = |i: usize, field: &str, value: &str| json!({"op": "test", "path": at(i, field), "value": value});
    let mut ops = vec![
        test(update, "manager", MANAGER),
        test(update, "operation", UPDATE),
    ];
    match entries.iter().position(|e| ours(e, APPLY)) {
        None => ops.push(json!({"op": "replace", "path": at(update, "operation"), "value": APPLY})),
        Some(apply) => {
            let field_set = |e: &ManagedFieldsEntry| e.fields_v1.as_ref().map(|f| f.0.clone());
            let mut fields = field_set(&entries[apply]).unwrap_or_else(|| json!({}));
            if let Some(more) = field_set(&entries[update]) {
                union(&mut fields, &more);
            }
            ops.extend([
                test(apply, "manager", MANAGER),
                test(apply, "operation", APPLY),
                json!({"op": "replace", "path": at(apply, "fieldsV1"), "value": fields}),
                json!({"op": "remove", "path": format!("/metadata/managedFields/{update}")}),
            ]);
        }
    }
    Some(Value::Array(ops))
}

/// Hands the operator's `Update` entry of `obj` (as the apiserver last answered) to its
/// `Apply` entry. False: `obj` has no such entry, nothing was sent.
pub async fn hand_over<T: Child>(client: &Client, ns: &str, obj: &T) -> Result<bool> {
    let Some(mut patch) = handover_patch(obj.meta()) else {
        return Ok(false);
    };
    let api: Api<T> = Api::namespaced(client.clone(), ns);
    let name = obj.name_any();
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    let mut attempt = 1;
    loop {
        let json: json_patch::Patch =
            serde_json::from_value(patch).map_err(|source| Error::Serialize {
                what: "a managedFields patch",
                source,
            })?;
        match api.patch(&name, &params, &Patch::<()>::Json(json)).await {
            Ok(_) => return Ok(true),
            // A test of the patch failed: the entries moved since `obj` was read.
            Err(kube::Error::Api(s)) if s.code == 422 && attempt < ATTEMPTS => {
                attempt += 1;
                debug!(kind = T::kind(&()).as_ref(), %name, attempt, message = %s.message,
                    "managedFields moved; reading them again");
                // Read again with an empty merge patch: it changes nothing and answers with the
                // object, and the operator may patch its children but not get them.
                let read = api.patch(&name, &params, &Patch::Merge(json!({}))).await?;
                match handover_patch(read.meta()) {
                    Some(again) => patch = again,
                    // Handed over meanwhile (an earlier attempt did go through).
                    None => return Ok(true),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;

    use super::*;

    fn entry(manager: &str, operation: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            api_version: Some("apps/v1".into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    fn meta(entries: Vec<ManagedFieldsEntry>) -> ObjectMeta {
        ObjectMeta {
            managed_fields: Some(entries),
            ..ObjectMeta::default()
        }
    }

    /// Applies `patch` to `meta` as the apiserver would.
    fn patched(meta: &ObjectMeta, patch: Value) -> ObjectMeta {
        let mut doc = json!({"metadata": meta});
        json_patch::patch(
            &mut doc,
            &serde_json::from_value::<json_patch::Patch>(patch).unwrap(),
        )
        .unwrap();
        serde_json::from_value(doc["metadata"].clone()).unwrap()
    }

    #[test]
    fn a_created_childs_update_entry_becomes_the_apply_entry() {
        let fields = json!({"f:spec": {"f:replicas": {}}});
        let created = meta(vec![
            entry("kube-controller-manager", UPDATE, json!({"f:status": {}})),
            entry(MANAGER, UPDATE, fields.clone()),
        ]);
        let handed = patched(&created, handover_patch(&created).unwrap());
        assert_eq!(
            handed.managed_fields.unwrap(),
            vec![
                entry("kube-controller-manager", UPDATE, json!({"f:status": {}})),
                entry(MANAGER, APPLY, fields),
            ]
        );
    }

    #[test]
    fn an_update_entry_beside_an_apply_entry_is_merged_into_it() {
        let created = meta(vec![
            entry(MANAGER, APPLY, json!({"f:spec": {"f:replicas": {}}})),
            entry("someone", UPDATE, json!({"f:metadata": {}})),
            entry(
                MANAGER,
                UPDATE,
                json!({"f:spec": {"f:paused": {}, "f:replicas": {}}, "f:data": {".": {}}}),
            ),
        ]);
        let handed = patched(&created, handover_patch(&created).unwrap());
        assert_eq!(
            handed.managed_fields.unwrap(),
            vec![
                entry(
                    MANAGER,
                    APPLY,
                    json!({"f:spec": {"f:paused": {}, "f:replicas": {}}, "f:data": {".": {}}})
                ),
                entry("someone", UPDATE, json!({"f:metadata": {}})),
            ]
        );
    }

    #[test]
    fn nothing_is_handed_over_without_an_update_entry_of_the_operator() {
        let applied = meta(vec![
            entry(MANAGER, APPLY, json!({})),
            entry("someone", UPDATE, json!({})),
        ]);
        assert_eq!(handover_patch(&applied), None);
        let mut status = entry(MANAGER, UPDATE, json!({}));
        status.subresource = Some("status".into());
        assert_eq!(handover_patch(&meta(vec![status])), None);
        assert_eq!(handover_patch(&ObjectMeta::default()), None);
    }

    #[test]
    fn the_patch_fails_when_the_entries_moved() {
        let created = meta(vec![entry(MANAGER, UPDATE, json!({}))]);
        let patch = handover_patch(&created).unwrap();
        let moved = json!({"metadata": meta(vec![
            entry("kube-controller-manager", UPDATE, json!({})),
            entry(MANAGER, UPDATE, json!({})),
        ])});
        let mut doc = moved.clone();
        let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
        assert!(json_patch::patch(&mut doc, &patch).is_err());
    }
}
