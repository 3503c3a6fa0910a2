//! The numbered migrations of the PostgreSQL backend, applied in order by
//! `mod.rs` (`schema_migrations` records the ones done). Never edit one
//! that has shipped: add the next.
//!
//! The control plane's tables mirror the SQLite ones (`sqlite/control.rs`)
//! column for column, so `migrate --from` can copy rows as they are. Times
//! are Unix milliseconds in BIGINT.

pub const MIGRATIONS: &[&str] = &[
    // 1: the control plane (tenants, tokens, runners, health, users).
    r#"
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);
CREATE TABLE api_tokens (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id),
    token_hash      TEXT NOT NULL UNIQUE,
    label           TEXT,
    created_at      BIGINT NOT NULL,
    revoked_at      BIGINT,
    created_by_user TEXT,
    created_by      TEXT NOT NULL DEFAULT '',
    expires_at      BIGINT,
    last_used_at    BIGINT,
    revoked_reason  TEXT
);
CREATE INDEX api_tokens_by_tenant ON api_tokens(tenant_id, created_at);
CREATE TABLE enrollment_tokens (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    token_hash  TEXT NOT NULL UNIQUE,
    label       TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    runner_id   TEXT,
    revoked_at  BIGINT
);
CREATE INDEX enrollment_tokens_by_tenant ON enrollment_tokens(tenant_id);
CREATE TABLE runners (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id),
    name            TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    health          TEXT NOT NULL,
    version         TEXT NOT NULL,
    arch            TEXT NOT NULL,
    os              TEXT NOT NULL,
    protocol        INTEGER,
    created_at      BIGINT NOT NULL,
    last_seen       BIGINT,
    connected_since BIGINT,
    revoked_at      BIGINT,
    update_group    TEXT NOT NULL DEFAULT '',
    reported_name   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runners_by_tenant ON runners(tenant_id);
CREATE INDEX runners_by_health ON runners(health);
CREATE TABLE health_events (
    seq         BIGSERIAL PRIMARY KEY,
    runner_id   TEXT NOT NULL REFERENCES runners(id),
    tenant_id   TEXT NOT NULL,
    at          BIGINT NOT NULL,
    health      TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX health_events_by_runner ON health_events(runner_id, seq);
CREATE TABLE fingerprints (
    runner_id    TEXT PRIMARY KEY REFERENCES runners(id),
    body         TEXT NOT NULL,
    notes        TEXT NOT NULL,
    collected_at BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE TABLE drift_events (
    seq         BIGSERIAL PRIMARY KEY,
    runner_id   TEXT NOT NULL REFERENCES runners(id),
    at          BIGINT NOT NULL,
    change      TEXT NOT NULL
);
CREATE INDEX drift_events_by_runner ON drift_events(runner_id, seq);
CREATE TABLE update_policies (
    tenant_id      TEXT NOT NULL REFERENCES tenants(id),
    grp            TEXT NOT NULL,
    version        TEXT NOT NULL,
    canary_percent INTEGER NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, grp)
);
CREATE TABLE update_reports (
    seq          BIGSERIAL PRIMARY KEY,
    runner_id    TEXT NOT NULL REFERENCES runners(id),
    at           BIGINT NOT NULL,
    version      TEXT NOT NULL,
    state        TEXT NOT NULL,
    from_version TEXT NOT NULL,
    reason       TEXT,
    took_ms      BIGINT
);
CREATE INDEX update_reports_by_runner ON update_reports(runner_id, seq);
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE TABLE sessions (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions(user_id);
CREATE INDEX sessions_by_expiry ON sessions(expires_at);
CREATE TABLE terminal_audit (
    seq         BIGSERIAL,
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    runner_id   TEXT NOT NULL,
    target      TEXT NOT NULL,
    who         TEXT NOT NULL,
    client      TEXT NOT NULL,
    opened_at   BIGINT NOT NULL,
    closed_at   BIGINT,
    reason      TEXT,
    bytes_in    BIGINT NOT NULL DEFAULT 0,
    bytes_out   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX terminal_audit_by_tenant ON terminal_audit(tenant_id, opened_at);
CREATE TABLE docker_states (
    runner_id   TEXT PRIMARY KEY REFERENCES runners(id),
    available   BOOLEAN NOT NULL,
    version     TEXT,
    api_version TEXT,
    reason      TEXT,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE container_views (
    runner_id   TEXT PRIMARY KEY REFERENCES runners(id),
    as_of       BIGINT NOT NULL
);
CREATE TABLE containers (
    runner_id   TEXT NOT NULL REFERENCES runners(id),
    id          TEXT NOT NULL,
    summary     TEXT NOT NULL,
    PRIMARY KEY (runner_id, id)
);
CREATE TABLE container_events (
    seq          BIGSERIAL PRIMARY KEY,
    runner_id    TEXT NOT NULL REFERENCES runners(id),
    at           BIGINT NOT NULL,
    time_nano    BIGINT NOT NULL,
    action       TEXT NOT NULL,
    container_id TEXT NOT NULL,
    body         TEXT NOT NULL
);
CREATE INDEX container_events_by_runner ON container_events(runner_id, seq);
CREATE INDEX container_events_by_age ON container_events(at);
"#,
    // 2: host metrics (`metrics.rs`): the sample tables partitioned by time
    // (`partitions.rs` makes and drops their partitions).
    r#"
CREATE TABLE metric_sources (
    id          BIGSERIAL PRIMARY KEY,
    runner_id   TEXT NOT NULL UNIQUE,
    last_ts     BIGINT
);
CREATE TABLE metric_schemas (
    id          BIGSERIAL PRIMARY KEY,
    hash        BYTEA NOT NULL UNIQUE,
    series      TEXT NOT NULL,
    last_used   BIGINT NOT NULL
);
CREATE TABLE metrics_raw (
    src     BIGINT NOT NULL,
    ts      BIGINT NOT NULL,
    schema  BIGINT NOT NULL,
    vals    BYTEA NOT NULL,
    PRIMARY KEY (src, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE metrics_1m (
    src     BIGINT NOT NULL,
    ts      BIGINT NOT NULL,
    schema  BIGINT NOT NULL,
    aggs    BYTEA NOT NULL,
    PRIMARY KEY (src, ts, schema)
) PARTITION BY RANGE (ts);
CREATE TABLE metrics_1h (
    src     BIGINT NOT NULL,
    ts      BIGINT NOT NULL,
    schema  BIGINT NOT NULL,
    aggs    BYTEA NOT NULL,
    PRIMARY KEY (src, ts, schema)
) PARTITION BY RANGE (ts);
CREATE TABLE metrics_dirty (
    level   INTEGER NOT NULL,
    bucket  BIGINT NOT NULL,
    src     BIGINT NOT NULL,
    PRIMARY KEY (level, bucket, src)
);
"#,
    // 3: container logs (`logs.rs`): blocks partitioned by their newest
    // line's time, in nanoseconds (`partitions.rs`).
    r#"
CREATE TABLE log_streams (
    id          BIGSERIAL PRIMARY KEY,
    runner_id   TEXT NOT NULL,
    container   TEXT NOT NULL,
    bytes       BIGINT NOT NULL DEFAULT 0,
    UNIQUE (runner_id, container)
);
CREATE TABLE log_blocks (
    id           BIGSERIAL,
    stream       BIGINT NOT NULL,
    container_id TEXT NOT NULL,
    tag          SMALLINT NOT NULL,
    ts_first     BIGINT NOT NULL,
    ts_last      BIGINT NOT NULL,
    lines        BIGINT NOT NULL,
    data         BYTEA NOT NULL
) PARTITION BY RANGE (ts_last);
CREATE INDEX log_blocks_time ON log_blocks (stream, ts_last);
CREATE INDEX log_blocks_order ON log_blocks (stream, id);
CREATE TABLE log_cursors (
    runner_id    TEXT NOT NULL,
    container_id TEXT NOT NULL,
    ts           BIGINT NOT NULL,
    skip         BIGINT NOT NULL,
    PRIMARY KEY (runner_id, container_id)
);
CREATE TABLE log_retention (
    runner_id   TEXT NOT NULL,
    container   TEXT NOT NULL,
    max_age_s   BIGINT NOT NULL,
    max_bytes   BIGINT NOT NULL,
    PRIMARY KEY (runner_id, container)
);
CREATE TABLE log_collect (
    runner_id   TEXT PRIMARY KEY,
    policy      TEXT NOT NULL
);
"#,
    // 4: jobs (`jobs.rs`): scripts, sealed secrets, jobs, their output
    // partitioned by the job's creation day, apps and deployments.
    r#"
CREATE TABLE scripts (
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    body        TEXT NOT NULL,
    interpreter TEXT NOT NULL,
    args        TEXT NOT NULL,
    timeout_s   BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
CREATE TABLE secrets (
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    sealed      BYTEA NOT NULL,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
CREATE TABLE jobs (
    seq              BIGSERIAL PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    tenant_id        TEXT NOT NULL,
    runner_id        TEXT NOT NULL,
    label            TEXT NOT NULL,
    spec             TEXT NOT NULL,
    status           TEXT NOT NULL,
    exit_code        INTEGER,
    signal           INTEGER,
    reason           TEXT NOT NULL DEFAULT '',
    created_ms       BIGINT NOT NULL,
    started_ms       BIGINT,
    finished_ms      BIGINT,
    stored_bytes     BIGINT NOT NULL DEFAULT 0,
    output_bytes     BIGINT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    output_pruned    BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX jobs_runner ON jobs (runner_id, status);
CREATE INDEX jobs_tenant ON jobs (tenant_id, seq);
CREATE INDEX jobs_finished ON jobs (tenant_id, finished_ms);
CREATE INDEX jobs_created ON jobs (created_ms);
CREATE TABLE job_output (
    seq       BIGINT NOT NULL,
    job_ms    BIGINT NOT NULL,
    "offset"  BIGINT NOT NULL,
    tag       SMALLINT NOT NULL,
    step      SMALLINT NOT NULL DEFAULT 0,
    ts_ms     BIGINT NOT NULL,
    data      BYTEA NOT NULL,
    PRIMARY KEY (seq, "offset", job_ms)
) PARTITION BY RANGE (job_ms);
CREATE TABLE apps (
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    def         TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
CREATE TABLE deployments (
    seq         BIGSERIAL,
    job_id      TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    app         TEXT NOT NULL,
    image       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    git_ref     TEXT,
    created_ms  BIGINT NOT NULL
);
CREATE INDEX deployments_app ON deployments (tenant_id, app, created_ms);
"#,
    // 5: alerts (as sqlite/alerts.rs): rules, channels with their sealed
    // config, the live state per (rule, target), history, silences and the
    // delivery log (the last two trimmed to the newest KEEP_ROWS by seq).
    r#"
CREATE TABLE alert_rules (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
CREATE INDEX alert_rules_tenant ON alert_rules (tenant_id);
CREATE TABLE alert_channels (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    public      TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    sealed      BYTEA NOT NULL,
    created_ms  BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE TABLE alert_state (
    rule_id     TEXT NOT NULL,
    target      TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    runner_id   TEXT NOT NULL,
    subject     TEXT NOT NULL,
    state       TEXT NOT NULL,
    since_ms    BIGINT NOT NULL,
    summary     TEXT NOT NULL,
    ack_by      TEXT,
    ack_ms      BIGINT,
    ack_comment TEXT,
    PRIMARY KEY (rule_id, target)
);
CREATE INDEX alert_state_tenant ON alert_state (tenant_id);
CREATE TABLE alert_history (
    seq         BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    rule_id     TEXT NOT NULL,
    runner_id   TEXT NOT NULL,
    subject     TEXT NOT NULL,
    state       TEXT NOT NULL,
    at_ms       BIGINT NOT NULL,
    summary     TEXT NOT NULL,
    silenced    BOOLEAN NOT NULL
);
CREATE INDEX alert_history_tenant ON alert_history (tenant_id, seq);
CREATE TABLE alert_silences (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    spec        TEXT NOT NULL,
    ends_ms     BIGINT NOT NULL
);
CREATE TABLE alert_deliveries (
    seq         BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    channel_id  TEXT NOT NULL,
    history_seq BIGINT,
    at_ms       BIGINT NOT NULL,
    attempt     BIGINT NOT NULL,
    ok          BOOLEAN NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX alert_deliveries_channel ON alert_deliveries (tenant_id, channel_id, seq);
"#,
    // 6: the fleet (as sqlite/fleet.rs) and the audit trail (as
    // sqlite/trail.rs: same columns, so a migrated chain verifies the same;
    // triggers refuse UPDATE and any DELETE above the anchor).
    r#"
CREATE TABLE labels (
    tenant_id   TEXT NOT NULL,
    runner_id   TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (runner_id, key)
);
CREATE INDEX labels_tenant ON labels (tenant_id);
CREATE TABLE proposals (
    tenant_id   TEXT NOT NULL,
    runner_id   TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (runner_id, key)
);
CREATE TABLE fleet_policy (
    tenant_id      TEXT PRIMARY KEY,
    job_deadline_s BIGINT,
    auto_accept    TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE job_deadlines (
    job_id      TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    runner_id   TEXT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX job_deadlines_expiry ON job_deadlines (expires_ms);
CREATE TABLE rollouts (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX rollouts_tenant ON rollouts (tenant_id, created_ms);
CREATE TABLE schedules (
    tenant_id       TEXT NOT NULL,
    name            TEXT NOT NULL,
    body            TEXT NOT NULL,
    last_occurrence BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
CREATE TABLE schedule_runs (
    tenant_id     TEXT NOT NULL,
    schedule      TEXT NOT NULL,
    occurrence_ms BIGINT NOT NULL,
    status        TEXT NOT NULL,
    at_ms         BIGINT NOT NULL,
    jobs          TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (tenant_id, schedule, occurrence_ms)
);
CREATE TABLE audit_entries (
    seq         BIGINT PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    tenant_id   TEXT,
    actor_kind  TEXT NOT NULL,
    actor_id    TEXT NOT NULL,
    actor_label TEXT NOT NULL,
    client      TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    params      TEXT NOT NULL,
    result      INTEGER NOT NULL,
    detail      TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX audit_by_tenant ON audit_entries (tenant_id, seq);
CREATE TABLE audit_anchor (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
CREATE FUNCTION audit_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only';
END $$;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_update();
CREATE FUNCTION audit_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq > COALESCE((SELECT seq FROM audit_anchor WHERE id = 1), 0) THEN
        RAISE EXCEPTION 'only retention removes audit entries';
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_delete();
"#,
    // 7: several replicas (`cluster.rs`): each replica's address and
    // heartbeat, the live link of each runner (one row at most: the
    // primary key is what keeps a runner from being linked twice), and
    // the leases of work done once (expiry in the database's clock).
    r#"
CREATE TABLE cluster_replicas (
    id            TEXT PRIMARY KEY,
    internal_addr TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);
CREATE TABLE runner_links (
    runner_id   TEXT PRIMARY KEY REFERENCES runners(id) ON DELETE CASCADE,
    replica_id  TEXT NOT NULL,
    generation  BIGINT NOT NULL,
    linked_at   BIGINT NOT NULL
);
CREATE INDEX runner_links_by_replica ON runner_links (replica_id);
CREATE TABLE cluster_leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
"#,
    // 8: terminal recordings (as sqlite/recordings.rs): each session's
    // asciicast header and its event chunks, and each tenant's policy.
    r#"
CREATE TABLE recordings (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    runner_id   TEXT NOT NULL,
    target      TEXT NOT NULL,
    who         TEXT NOT NULL,
    started_ms  BIGINT NOT NULL,
    ended_ms    BIGINT,
    header      TEXT NOT NULL,
    bytes       BIGINT NOT NULL DEFAULT 0,
    truncated   BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX recordings_by_tenant ON recordings (tenant_id, started_ms);
CREATE INDEX recordings_by_start ON recordings (started_ms);
CREATE TABLE recording_chunks (
    recording_id TEXT NOT NULL REFERENCES recordings(id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL,
    data         BYTEA NOT NULL,
    PRIMARY KEY (recording_id, seq)
);
CREATE TABLE recording_policy (
    tenant_id      TEXT PRIMARY KEY,
    record         BOOLEAN NOT NULL,
    record_input   BOOLEAN NOT NULL,
    viewers_replay BOOLEAN NOT NULL,
    max_bytes      BIGINT NOT NULL
);
"#,
    // 9: single sign-on (as sqlite/control.rs): a tenant's OpenID Connect
    // providers, the user each provider's subject became, password logins
    // allowed or not.
    r#"
CREATE TABLE oidc_providers (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    name          TEXT NOT NULL,
    issuer        TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    secret_nonce  BYTEA NOT NULL,
    secret_sealed BYTEA NOT NULL,
    role_claim    TEXT NOT NULL,
    role_map      TEXT NOT NULL,
    default_role  TEXT,
    created_at    BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE TABLE oidc_identities (
    provider_id TEXT NOT NULL REFERENCES oidc_providers(id) ON DELETE CASCADE,
    subject     TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (provider_id, subject)
);
CREATE INDEX oidc_identities_by_user ON oidc_identities (user_id);
CREATE TABLE login_policy (
    tenant_id      TEXT PRIMARY KEY REFERENCES tenants(id),
    password_login BOOLEAN NOT NULL
);
"#,
    // Labels by value: a selector's `k=v`, `k in (…)`, `k` finds its
    // runners without reading every label of the tenant.
    r#"
CREATE INDEX labels_by_value ON labels (tenant_id, key, value);
"#,
    // fleet.db's runner_versions: a runner's own desired version (the
    // update rollout sets it runner by runner).
    r#"
CREATE TABLE runner_versions (
    tenant_id TEXT NOT NULL,
    runner_id TEXT PRIMARY KEY,
    version   TEXT NOT NULL,
    set_ms    BIGINT NOT NULL
);
CREATE INDEX runner_versions_tenant ON runner_versions (tenant_id);
"#,
    // 12: a rollout's driver state while it has work left, and the
    // revision its writers compare and set (`fleet/rollout.rs`: the
    // replica holding the once-only lease drives it from here).
    r#"
ALTER TABLE rollouts ADD COLUMN driver TEXT;
ALTER TABLE rollouts ADD COLUMN rev BIGINT NOT NULL DEFAULT 0;
CREATE INDEX rollouts_open ON rollouts (created_ms) WHERE driver IS NOT NULL;
"#,
    // 13: a runner's alerts, read by the replica it links to (the engine
    // there takes them over); the replica holding a terminal session,
    // so every replica lists it as open, and a dead replica's sessions
    // are closed by the one that reaps it.
    r#"
CREATE INDEX alert_state_runner ON alert_state (runner_id);
ALTER TABLE terminal_audit ADD COLUMN replica_id TEXT;
CREATE INDEX terminal_audit_open_by_replica ON terminal_audit (replica_id)
    WHERE closed_at IS NULL;
"#,
    // 14: releases in the database, for every replica (releases.rs; the
    // SQLite backend keeps them as files in the data dir). A file is its
    // row and its chunks of at most 1 MiB, in seq order; the blob id
    // pins one upload, so a reader never mixes two.
    r#"
CREATE TABLE release_files (
    version    TEXT NOT NULL,
    name       TEXT NOT NULL,
    blob       TEXT NOT NULL UNIQUE,
    size       BIGINT NOT NULL,
    sha256     TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (version, name)
);
CREATE TABLE release_chunks (
    blob TEXT NOT NULL REFERENCES release_files(blob) ON DELETE CASCADE,
    seq  INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (blob, seq)
);
"#,
];
