//! The answers every operation can give besides its own: documented once for all of them, so
//! that the OpenAPI document lists every status a client must handle.

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
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

/// Adds the common answers to every operation of `doc` that does not document them itself.
pub fn document(doc: &mut OpenApiDoc) {
    document_named_keys(doc);
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
