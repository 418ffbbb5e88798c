//! Authorization: one policy function decides every request from the caller's standing in an
//! organization, the action, and the resource.
//!
//! The caller's [`Standing`] is loaded once per request (organization role, project role through
//! direct grants and teams, the environment's policy); [`decide`] is pure. A caller with no
//! standing in the organization gets [`Decision::Hidden`] — answered as 404, exactly like a
//! resource that does not exist — so tenants cannot probe each other.

// The roles are part of the API (responses carry them), so they live in `coffer-client`.
pub use coffer_client::types::{EnvAccess, OrgRole, ProjectRole};

/// Everything a request may ask to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    OrgRead,
    OrgUpdate,
    OrgDelete,
    MembersRead,
    MembersManage,
    /// Grant or take away the owner role.
    OwnersManage,
    TeamsRead,
    TeamsManage,
    OrgAuditRead,
    ServiceTokensManage,
    ProjectCreate,
    ProjectRead,
    ProjectUpdate,
    ProjectDelete,
    ProjectAccessManage,
    EnvironmentsManage,
    SecretsRead,
    SecretsWrite,
}

impl Action {
    pub const ALL: &'static [Action] = &[
        Self::OrgRead,
        Self::OrgUpdate,
        Self::OrgDelete,
        Self::MembersRead,
        Self::MembersManage,
        Self::OwnersManage,
        Self::TeamsRead,
        Self::TeamsManage,
        Self::OrgAuditRead,
        Self::ServiceTokensManage,
        Self::ProjectCreate,
        Self::ProjectRead,
        Self::ProjectUpdate,
        Self::ProjectDelete,
        Self::ProjectAccessManage,
        Self::EnvironmentsManage,
        Self::SecretsRead,
        Self::SecretsWrite,
    ];

    fn needs_project(self) -> bool {
        matches!(
            self,
            Self::ProjectRead
                | Self::ProjectUpdate
                | Self::ProjectDelete
                | Self::ProjectAccessManage
                | Self::EnvironmentsManage
                | Self::SecretsRead
                | Self::SecretsWrite
        )
    }
}

/// A machine identity's limits: one project, some environments, read or read-write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenScope {
    pub project_id: String,
    pub environment_ids: Vec<String>,
    pub read_write: bool,
}

/// The caller's standing for one request, as loaded from storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// The caller's role in the organization; `None` for a service token or a non-member.
    pub org_role: Option<OrgRole>,
    /// Set for a service token of this organization.
    pub token: Option<TokenScope>,
    /// The project concerned, if any: its id and the caller's strongest role in it (direct or
    /// through a team).
    pub project: Option<(String, Option<ProjectRole>)>,
    /// The environment concerned, if any: its id and the policy for the caller's project role.
    pub environment: Option<(String, Option<EnvAccess>)>,
}

/// The answer of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The caller may see the resource but not do this: 403.
    Deny,
    /// The caller may not know the resource exists: 404.
    Hidden,
}

/// Decides whether the caller with `standing` may perform `action`.
pub fn decide(standing: &Standing, action: Action) -> Decision {
    use Decision::{Allow, Deny, Hidden};

    if let Some(scope) = &standing.token {
        return decide_token(scope, standing, action);
    }
    let Some(org_role) = standing.org_role else {
        return Hidden;
    };

    // Owners and admins manage everything in their organization.
    if org_role >= OrgRole::Admin {
        return match action {
            Action::OrgDelete | Action::OwnersManage if org_role != OrgRole::Owner => Deny,
            _ => Allow,
        };
    }

    if !action.needs_project() {
        return match action {
            Action::OrgRead | Action::MembersRead | Action::TeamsRead => Allow,
            Action::ProjectCreate if org_role == OrgRole::Member => Allow,
            _ => Deny,
        };
    }

    // Members and viewers reach a project only through a grant; without one it is hidden.
    let Some((_, Some(role))) = &standing.project else {
        return Hidden;
    };
    let role = *role;
    match action {
        Action::ProjectRead => Allow,
        Action::ProjectUpdate | Action::ProjectAccessManage | Action::EnvironmentsManage => {
            if role == ProjectRole::Admin {
                Allow
            } else {
                Deny
            }
        }
        Action::ProjectDelete => Deny,
        Action::SecretsRead | Action::SecretsWrite => {
            let access = standing
                .environment
                .as_ref()
                .and_then(|(_, policy)| *policy)
                .unwrap_or_else(|| role.default_access());
            let needed = if action == Action::SecretsRead {
                EnvAccess::Read
            } else {
                EnvAccess::ReadWrite
            };
            if access >= needed { Allow } else { Deny }
        }
        _ => Deny,
    }
}

fn decide_token(scope: &TokenScope, standing: &Standing, action: Action) -> Decision {
    use Decision::{Allow, Deny, Hidden};
    let project_ok = standing
        .project
        .as_ref()
        .is_some_and(|(id, _)| *id == scope.project_id);
    let env_ok = standing
        .environment
        .as_ref()
        .is_some_and(|(id, _)| scope.environment_ids.iter().any(|e| e == id));
    match action {
        Action::OrgRead => Allow,
        Action::ProjectRead if project_ok => Allow,
        Action::SecretsRead if project_ok && env_ok => Allow,
        Action::SecretsWrite if project_ok && env_ok && scope.read_write => Allow,
        // Outside its scope a token learns nothing about what exists.
        _ if action.needs_project() && !project_ok => Hidden,
        _ => Deny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Decision::{Allow, Deny, Hidden};

    fn standing(
        org: Option<OrgRole>,
        project: Option<ProjectRole>,
        env: Option<EnvAccess>,
    ) -> Standing {
        Standing {
            org_role: org,
            token: None,
            project: Some(("p".into(), project)),
            environment: Some(("e".into(), env)),
        }
    }

    /// The expected answer for every organization role × project role × action, written out as
    /// the rules users read in the documentation.
    fn expected(
        org: OrgRole,
        project: Option<ProjectRole>,
        env: Option<EnvAccess>,
        action: Action,
    ) -> Decision {
        match org {
            OrgRole::Owner => Allow,
            OrgRole::Admin => {
                if matches!(action, OrgDelete | OwnersManage) {
                    Deny
                } else {
                    Allow
                }
            }
            OrgRole::Member | OrgRole::Viewer => match action {
                OrgRead | MembersRead | TeamsRead => Allow,
                ProjectCreate => {
                    if org == OrgRole::Member {
                        Allow
                    } else {
                        Deny
                    }
                }
                OrgUpdate | OrgDelete | MembersManage | OwnersManage | TeamsManage
                | OrgAuditRead | ServiceTokensManage => Deny,
                _ => match project {
                    None => Hidden,
                    Some(role) => match action {
                        ProjectRead => Allow,
                        ProjectDelete => Deny,
                        ProjectUpdate | ProjectAccessManage | EnvironmentsManage => {
                            if role == ProjectRole::Admin {
                                Allow
                            } else {
                                Deny
                            }
                        }
                        SecretsRead => {
                            if env.unwrap_or(role.default_access()) >= EnvAccess::Read {
                                Allow
                            } else {
                                Deny
                            }
                        }
                        SecretsWrite => {
                            if env.unwrap_or(role.default_access()) == EnvAccess::ReadWrite {
                                Allow
                            } else {
                                Deny
                            }
                        }
                        _ => Deny,
                    },
                },
            },
        }
    }

    #[test]
    fn every_cell_of_the_role_matrix_is_as_documented() {
        let mut cells = 0;
        for &org in OrgRole::ALL {
            for project in [
                None,
                Some(ProjectRole::Admin),
                Some(ProjectRole::Developer),
                Some(ProjectRole::Viewer),
            ] {
                for env in [
                    None,
                    Some(EnvAccess::None),
                    Some(EnvAccess::Read),
                    Some(EnvAccess::ReadWrite),
                ] {
                    for &action in Action::ALL {
                        let got = decide(&standing(Some(org), project, env), action);
                        assert_eq!(
                            got,
                            expected(org, project, env, action),
                            "{org:?} {project:?} {env:?} {action:?}"
                        );
                        cells += 1;
                    }
                }
            }
        }
        assert_eq!(cells, 4 * 4 * 4 * Action::ALL.len());
    }

    #[test]
    fn a_stranger_sees_nothing_at_all() {
        for &action in Action::ALL {
            assert_eq!(
                decide(&standing(None, Some(ProjectRole::Admin), None), action),
                Hidden,
                "{action:?}"
            );
        }
    }

    #[test]
    fn developers_can_be_kept_out_of_production() {
        let dev = |policy| standing(Some(OrgRole::Member), Some(ProjectRole::Developer), policy);
        assert_eq!(decide(&dev(None), SecretsWrite), Allow);
        assert_eq!(decide(&dev(Some(EnvAccess::Read)), SecretsWrite), Deny);
        assert_eq!(decide(&dev(Some(EnvAccess::Read)), SecretsRead), Allow);
        assert_eq!(decide(&dev(Some(EnvAccess::None)), SecretsRead), Deny);
    }

    #[test]
    fn a_service_token_reaches_only_its_project_and_environments() {
        let scope = TokenScope {
            project_id: "p".into(),
            environment_ids: vec!["e".into()],
            read_write: false,
        };
        let at = |project: &str, env: &str| Standing {
            org_role: None,
            token: Some(scope.clone()),
            project: Some((project.into(), None)),
            environment: Some((env.into(), None)),
        };
        assert_eq!(decide(&at("p", "e"), SecretsRead), Allow);
        assert_eq!(decide(&at("p", "e"), SecretsWrite), Deny);
        assert_eq!(decide(&at("p", "other"), SecretsRead), Deny);
        assert_eq!(decide(&at("q", "e"), SecretsRead), Hidden);
        assert_eq!(decide(&at("q", "e"), ProjectRead), Hidden);
        for action in [
            OrgUpdate,
            OrgDelete,
            MembersManage,
            ServiceTokensManage,
            ProjectCreate,
            OrgAuditRead,
        ] {
            assert_eq!(decide(&at("p", "e"), action), Deny, "{action:?}");
        }
        let rw = Standing {
            token: Some(TokenScope {
                read_write: true,
                ..scope.clone()
            }),
            ..at("p", "e")
        };
        assert_eq!(decide(&rw, SecretsWrite), Allow);
    }
}
