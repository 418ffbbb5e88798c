//! The answers every operation can give besides its own: documented once for all of them, so
//! that the OpenAPI document lists every status a client must handle.

use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi as OpenApiDoc, Ref, RefOr, Response, ResponseBuilder,
};

/// A status an operation may answer, when it applies.
struct Common {
    status: &'static str,
    description: &'static str,
    applies: fn(&Operation) -> bool,
    retry_after: bool,
}

fn always(_: &Operation) -> bool {
    true
}

fn authenticated(operation: &Operation) -> bool {
    operation.security.as_ref().is_some_and(|s| !s.is_empty())
}

fn with_body(operation: &Operation) -> bool {
    operation.request_body.is_some()
}

const COMMON: &[Common] = &[
    Common {
        status: "400",
        description: "The query, a path parameter or the body is malformed (`invalid_query`, `invalid_json`, `invalid_cursor`…)",
        applies: always,
        retry_after: false,
    },
    Common {
        status: "401",
        description: "No credentials, or invalid or expired ones (`unauthorized`)",
        applies: authenticated,
        retry_after: false,
    },
    Common {
        status: "413",
        description: "The body is over the server's limit (`payload_too_large`)",
        applies: with_body,
        retry_after: false,
    },
    Common {
        status: "415",
        description: "The body is not of the documented media type (`unsupported_media_type`)",
        applies: with_body,
        retry_after: false,
    },
    Common {
        status: "422",
        description: "The request is well-formed but not valid (a parameter or the body): its `code` says why",
        applies: always,
        retry_after: false,
    },
    Common {
        status: "429",
        description: "Too many requests (`rate_limited`): retry after `Retry-After` seconds",
        applies: always,
        retry_after: true,
    },
    Common {
        status: "503",
        description: "The server cannot answer now (its database, a queue): retry after `Retry-After` seconds",
        applies: always,
        retry_after: true,
    },
];

fn response(common: &Common) -> Response {
    let mut response = ResponseBuilder::new()
        .description(common.description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorResponse")))
                .build(),
        );
    if common.retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                )
                .description(Some("Seconds to wait before trying again"))
                .build(),
        );
    }
    response.build()
}

/// The paths of the collection's operations that also name the secret of that key, for the
/// methods the operation does not use (see `secrets::router`).
const NAMED_KEYS: [&str; 3] = ["export", "import", "copy"];
const SECRET: &str = "/api/v1/orgs/{org}/projects/{project}/environments/{env}/secrets/{key}";

/// Documents GET, PUT and DELETE of the secrets whose keys are the names of the collection's
/// operations at those operations' paths, as `…/secrets/{key}` documents them for other keys.
fn document_named_keys(doc: &mut OpenApiDoc) {
    let Some(secret) = doc.paths.paths.get(SECRET).cloned() else {
        return;
    };
    for key in NAMED_KEYS {
        let path = SECRET.replace("{key}", key);
        let Some(item) = doc.paths.paths.get_mut(&path) else {
            continue;
        };
        for (slot, operation) in [
            (&mut item.get, &secret.get),
            (&mut item.put, &secret.put),
            (&mut item.delete, &secret.delete),
        ] {
            let Some(operation) = operation else { continue };
            if slot.is_some() {
                continue;
            }
            let mut operation = operation.clone();
            if let Some(parameters) = operation.parameters.as_mut() {
                parameters.retain(|p| p.name != "key");
            }
            operation.operation_id = operation.operation_id.map(|id| format!("{id}_named_{key}"));
            operation.summary = operation
                .summary
                .map(|s| format!("{s} (the secret whose key is `{key}`)"));
            *slot = Some(operation);
        }
    }
}

/// Resources addressed by a slug or a name, not by their id: (the path that creates one, its
/// path parameter, the field of the answer that fills it, the operations that address it).
const BY_SLUG: &[(&str, &str, &str, &[&str])] = &[
    ("/api/v1/orgs", "org", "slug", &["get_org", "update_org"]),
    (
        "/api/v1/orgs/{org}/teams",
        "team",
        "slug",
        &["get_team", "update_team", "delete_team"],
    ),
    (
        "/api/v1/orgs/{org}/projects",
        "project",
        "slug",
        &["get_project", "update_project"],
    ),
    (
        "/api/v1/orgs/{org}/projects/{project}/environments",
        "env",
        "slug",
        &["get_environment", "update_environment"],
    ),
    (
        "/api/v1/orgs/{org}/projects/{project}/environments/{env}/dynamic-secrets",
        "name",
        "name",
        &[
            "get_dynamic_secret",
            "update_dynamic_secret",
            "delete_dynamic_secret",
        ],
    ),
];

/// Links from the creation of a resource addressed by slug to the operations on it, so that a
/// client (or a test generator) fills the path with the slug, not the id beside it.
fn document_links(doc: &mut OpenApiDoc) {
    for (path, parameter, field, operations) in BY_SLUG {
        let Some(created) = doc
            .paths
            .paths
            .get_mut(*path)
            .and_then(|item| item.post.as_mut())
            .and_then(|post| post.responses.responses.get_mut("201"))
        else {
            continue;
        };
        let RefOr::T(created) = created else { continue };
        let inherited: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for operation in *operations {
            let mut link = LinkBuilder::new()
                .operation_id(*operation)
                .parameter(*parameter, format!("$response.body#/{field}"));
            for name in &inherited {
                link = link.parameter(*name, format!("$request.path.{name}"));
            }
            created
                .links
                .insert((*operation).to_owned(), RefOr::T(link.build()));
        }
    }
}

/// A text body (an import's file) is a string, never `null`: its absence is an empty file.
fn text_bodies(operation: &mut Operation) {
    let Some(body) = operation.request_body.as_mut() else {
        return;
    };
    for (media, content) in body.content.iter_mut() {
        if !media.starts_with("text/") {
            continue;
        }
        if let Some(RefOr::T(Schema::Object(object))) = content.schema.as_mut()
            && let SchemaType::Array(types) = &object.schema_type
        {
            let kept: Vec<Type> = types
                .iter()
                .filter(|t| **t != Type::Null)
                .cloned()
                .collect();
            if let [only] = kept.as_slice() {
                object.schema_type = SchemaType::Type(only.clone());
            }
        }
    }
}

/// Adds the common answers to every operation of `doc` that does not document them itself.
pub fn document(doc: &mut OpenApiDoc) {
    document_named_keys(doc);
    document_links(doc);
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            text_bodies(operation);
            for common in COMMON {
                if (common.applies)(operation) {
                    operation
                        .responses
                        .responses
                        .entry(common.status.to_owned())
                        .or_insert_with(|| RefOr::T(response(common)));
                }
            }
        }
    }
}

/// Renames the fields of every link of `doc` (JSON) to their names in the specification.
pub fn camel_case_links(doc: &mut serde_json::Value) {
    const NAMES: [(&str, &str); 3] = [
        ("operation_id", "operationId"),
        ("operation_ref", "operationRef"),
        ("request_body", "requestBody"),
    ];
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let links = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (from, to) in NAMES {
            if let Some(value) = link.remove(from) {
                link.insert(to.to_owned(), value);
            }
        }
    }
}
