-- Funnel pipeline tables. Applied in file order by `funnel migrate` and at
-- worker start; every statement is idempotent (statements split on ";", so
-- no semicolons inside string literals). `{database}` is replaced by the
-- configured database (default `funnel`).
--
-- Idempotency (at-least-once delivery, retried writes):
--   * every insert carries insert_deduplication_token (the agent, a hash of
--     the batch's topic/partition/offset ranges, and the table), and
--     non_replicated_deduplication_window makes a retry of the same batch a no-op;
--   * a replay after a crash forms different batches, so each table is also
--     keyed by its natural id in a Replacing/Aggregating engine. Read with
--     FINAL (the views below do) to see each row once before merges.

CREATE DATABASE IF NOT EXISTS {database};

-- Every valid event, normalized. Natural id: event_id. user_id and
-- anonymous_id are as sent (empty when absent); person_id is the person the
-- event was counted under when it was processed: the user id once linked,
-- else the anonymous id (README, "Identity"; join identities for today's).
CREATE TABLE IF NOT EXISTS {database}.events
(
    event_id        UUID,
    event_type      LowCardinality(String),
    funnel          LowCardinality(String),
    user_id         String COMMENT 'as sent, empty when absent',
    anonymous_id    String COMMENT 'as sent, empty when absent',
    person_id       String COMMENT 'the person the event was counted under',
    ts              DateTime64(3, 'UTC'),
    received_at     DateTime64(3, 'UTC'),
    channel         LowCardinality(String) COMMENT 'as sent, empty when absent',
    attributed_channel LowCardinality(String) COMMENT 'first-touch (or last-touch) channel',
    campaign        String,
    product         String,
    region          String,
    manager         String,
    amount          Decimal(18, 4) COMMENT 'purchases only, else 0',
    currency        LowCardinality(String),
    order_id        String,
    email_hash      String COMMENT 'keyed HMAC-SHA256 of the e-mail, never the address',
    properties      Map(String, String),
    source          String COMMENT 'topic:partition:offset it was read from',
    customer        LowCardinality(String) COMMENT 'purchases: new or returning, else empty'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (funnel, event_type, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- First time a person reached a stage. Natural id: (funnel, stage, user_id);
-- in this and the tables below user_id is the person id (the user id, or the
-- anonymous id of a person not known yet). When an anonymous person is linked
-- to a user id, their rows here come again as tombstones (is_deleted = 1) and
-- the user's as a higher version: FINAL counts each person once.
CREATE TABLE IF NOT EXISTS {database}.stage_entries
(
    funnel          LowCardinality(String),
    stage           LowCardinality(String),
    stage_index     UInt8,
    user_id         String,
    ts              DateTime64(3, 'UTC'),
    channel         LowCardinality(String) COMMENT 'first-touch (or last-touch) channel',
    event_id        UUID,
    campaign        String COMMENT 'first-touch campaign',
    product         LowCardinality(String) COMMENT 'latest product the user''s events named',
    region          LowCardinality(String),
    manager         LowCardinality(String),
    version         UInt32,
    is_deleted      UInt8,
    excluded        UInt8 DEFAULT 0 COMMENT '1: an exclude event took the person out of this funnel''s figures'
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (funnel, stage, user_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- A user advancing from their furthest stage (in event time) to a later one,
-- skips included. Natural id: (funnel, to_stage, user_id). A transition that a
-- late-arriving event corrected comes again with a higher version; one that
-- no longer exists comes as a tombstone (is_deleted = 1). FINAL shows the
-- current ones.
CREATE TABLE IF NOT EXISTS {database}.transitions
(
    funnel          LowCardinality(String),
    from_stage      LowCardinality(String),
    to_stage        LowCardinality(String),
    from_index      UInt8,
    to_index        UInt8,
    user_id         String,
    from_ts         DateTime64(3, 'UTC'),
    ts              DateTime64(3, 'UTC'),
    seconds         Float64,
    channel         LowCardinality(String),
    event_id        UUID,
    version         UInt32,
    is_deleted      UInt8,
    campaign        String COMMENT 'first-touch campaign',
    excluded        UInt8 DEFAULT 0 COMMENT '1: the person is excluded from this funnel''s figures'
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (funnel, to_stage, user_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Tumbling event-time windows as memberships: one row per (window size,
-- funnel, kind, stage, user), in the window of the entry / the transition's
-- to-stage time. A replay rewrites the same row, a corrected transition
-- replaces it (version), a retracted one is a tombstone, a late event lands
-- in its old window. Count members with the stage_counts_final view.
CREATE TABLE IF NOT EXISTS {database}.stage_counts
(
    window_start    DateTime('UTC'),
    window_seconds  UInt32,
    funnel          LowCardinality(String),
    kind            LowCardinality(String) COMMENT 'entry or transition',
    from_stage      LowCardinality(String) COMMENT 'empty for entries',
    stage           LowCardinality(String) COMMENT 'entered stage / to_stage',
    channel         LowCardinality(String),
    user_id         String,
    version         UInt32,
    is_deleted      UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
PARTITION BY toYYYYMM(window_start)
ORDER BY (funnel, window_seconds, kind, stage, user_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Anonymous ids linked to user ids: one row per (anonymous_id, user_id) that
-- an event carried together. status 'linked' is the link that counts (the
-- first one of the anonymous id); 'conflict' a later one to another user id,
-- not applied, kept for audit (funnel_identity_conflicts_total counts them).
CREATE TABLE IF NOT EXISTS {database}.identities
(
    anonymous_id    String,
    user_id         String,
    first_seen      DateTime64(3, 'UTC') COMMENT 'event time of the event that carried both',
    source          String COMMENT 'topic:partition:offset of that event',
    event_id        UUID,
    status          LowCardinality(String) COMMENT 'linked or conflict'
)
ENGINE = ReplacingMergeTree
ORDER BY (anonymous_id, user_id)
SETTINGS non_replicated_deduplication_window = 1000;
