-- Funnel analytics: the funnel configuration as a table, cohort and closed
-- conversion within each funnel's conversion window, breakdowns, revenue,
-- stalled leads. Everything reads deduplicated rows (FINAL).

-- The configured funnels, written by every worker at start (latest wins).
CREATE TABLE IF NOT EXISTS {database}.funnel_stages
(
    funnel          LowCardinality(String),
    stage           LowCardinality(String),
    stage_index     UInt8,
    stages          UInt8 COMMENT 'number of stages in the funnel',
    conversion_window_seconds UInt64,
    attribution     LowCardinality(String),
    updated_at      DateTime64(3, 'UTC'),
    within_seconds  UInt64 DEFAULT 0 COMMENT 'within_days of the stage in seconds, 0 for none',
    event_type      LowCardinality(String) DEFAULT stage COMMENT 'the event type the stage reads'
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (funnel, stage);

-- Purchases (each event_id once) under the user's attribution as it is now.
-- An event row keeps the channel and campaign attributed when it was
-- processed; in a first-touch funnel an earlier touch that arrives later (out
-- of order, late) moves the first touch, and the journey re-writes the user's
-- entries under it, so a first-touch purchase takes the channel and campaign
-- of the user's entries. Last-touch purchases keep their own.
CREATE OR REPLACE VIEW {database}.purchases AS
SELECT p.funnel AS funnel, p.event_id AS event_id, p.user_id AS user_id, p.ts AS ts,
       if(f.attribution = 'first_touch' AND u.channel != '', u.channel, p.attributed_channel)
           AS attributed_channel,
       if(f.attribution = 'first_touch' AND u.channel != '', u.campaign, p.campaign) AS campaign,
       p.product AS product, p.region AS region, p.manager AS manager, p.amount AS amount,
       p.currency AS currency, p.order_id AS order_id, p.customer AS customer
FROM (SELECT * FROM {database}.events FINAL WHERE event_type = 'purchase') AS p
LEFT JOIN (SELECT funnel, any(attribution) AS attribution FROM {database}.funnel_stages FINAL
           GROUP BY funnel) AS f
    ON f.funnel = p.funnel
LEFT JOIN (SELECT funnel, user_id, argMax(channel, ts) AS channel, argMax(campaign, ts) AS campaign
           FROM {database}.stage_entries FINAL GROUP BY funnel, user_id) AS u
    ON u.funnel = p.funnel AND u.user_id = p.user_id;

-- Revenue per funnel, attributed channel and currency (each event_id once).
CREATE OR REPLACE VIEW {database}.revenue_by_channel AS
SELECT funnel, attributed_channel AS channel, currency,
       count() AS orders, sum(amount) AS revenue, avg(amount) AS average_order_value
FROM {database}.purchases
GROUP BY funnel, channel, currency;

-- Cohort conversion: of the users who entered from_stage on cohort_day, how
-- many reached to_stage within the funnel's conversion window (converted),
-- how many ran out of it without (timed_out: closed lost), and how many are
-- still inside it (open). closed_conversion = converted / (converted +
-- timed_out), open users excluded - the sales rule. A next stage with
-- within_days counts as converted only within that many days of from_stage.
CREATE OR REPLACE VIEW {database}.cohort_conversion AS
SELECT toDate(a.ts) AS cohort_day, a.funnel AS funnel, a.channel AS channel,
       a.stage AS from_stage, s.stage AS to_stage,
       count() AS entered,
       countIf(b.user_id != '' AND b.ts >= a.ts
               AND b.ts <= a.ts + toIntervalSecond(s.window_seconds)) AS converted,
       countIf(NOT (b.user_id != '' AND b.ts >= a.ts
                    AND b.ts <= a.ts + toIntervalSecond(s.window_seconds))
               AND a.ts + toIntervalSecond(s.window_seconds) < now64(3)) AS timed_out,
       entered - converted - timed_out AS open,
       converted / entered AS cohort_conversion,
       if(converted + timed_out = 0, NULL, converted / (converted + timed_out)) AS closed_conversion
FROM (SELECT funnel, stage, stage_index, user_id, ts, channel
      FROM {database}.stage_entries FINAL WHERE excluded = 0) AS a
INNER JOIN (SELECT funnel, stage, stage_index,
                   if(within_seconds > 0 AND within_seconds < conversion_window_seconds, within_seconds,
                      conversion_window_seconds) AS window_seconds
            FROM {database}.funnel_stages FINAL) AS s
    ON s.funnel = a.funnel
LEFT JOIN (SELECT funnel, stage, user_id, ts FROM {database}.stage_entries FINAL WHERE excluded = 0) AS b
    ON b.funnel = a.funnel AND b.stage = s.stage AND b.user_id = a.user_id
WHERE s.stage_index > a.stage_index
GROUP BY cohort_day, funnel, channel, from_stage, to_stage;

-- Time to convert per transition and first-touch campaign.
CREATE OR REPLACE VIEW {database}.time_to_convert_by_campaign AS
SELECT funnel, from_stage, to_stage, campaign, count() AS transitions,
       quantileExact(0.5)(seconds) AS p50_seconds,
       quantileExact(0.9)(seconds) AS p90_seconds,
       quantileExact(0.99)(seconds) AS p99_seconds
FROM {database}.transitions FINAL
WHERE excluded = 0
GROUP BY funnel, from_stage, to_stage, campaign;

-- Entries per stage by every breakdown at once (filter or group as needed).
CREATE OR REPLACE VIEW {database}.stage_entries_breakdown AS
SELECT funnel, stage, stage_index, channel, campaign, product, region, manager,
       count() AS users
FROM {database}.stage_entries FINAL
WHERE excluded = 0
GROUP BY funnel, stage, stage_index, channel, campaign, product, region, manager;

-- Revenue per funnel, channel and currency, split by new vs returning customers.
CREATE OR REPLACE VIEW {database}.revenue_by_customer AS
SELECT funnel, attributed_channel AS channel, currency, customer,
       count() AS orders, sum(amount) AS revenue, avg(amount) AS average_order_value,
       uniqExact(user_id) AS customers
FROM {database}.purchases
WHERE funnel != ''
GROUP BY funnel, channel, currency, customer;

-- Customer value: revenue per paying customer, per funnel, channel and currency.
CREATE OR REPLACE VIEW {database}.customer_value_by_channel AS
SELECT funnel, attributed_channel AS channel, currency,
       uniqExact(user_id) AS customers, sum(amount) AS revenue,
       revenue / customers AS revenue_per_customer
FROM {database}.purchases
WHERE funnel != ''
GROUP BY funnel, channel, currency;

-- Leads to chase: users whose furthest stage is not the last one, with the
-- time since they last progressed and a temperature (hot < 1 day, warm < 7
-- days, cold beyond).
CREATE OR REPLACE VIEW {database}.stalled_leads AS
SELECT e.funnel AS funnel, e.user_id AS user_id, e.furthest_stage AS stage,
       e.furthest_index AS stage_index, e.first_channel AS channel,
       e.last_campaign AS campaign, e.last_manager AS manager,
       e.last_ts AS last_progress,
       dateDiff('second', e.last_ts, now64(3)) AS stalled_seconds,
       multiIf(stalled_seconds < 86400, 'hot', stalled_seconds < 7 * 86400, 'warm', 'cold')
           AS temperature
FROM (SELECT funnel, user_id,
             argMax(stage, stage_index) AS furthest_stage, max(stage_index) AS furthest_index,
             max(ts) AS last_ts, any(channel) AS first_channel,
             argMax(campaign, stage_index) AS last_campaign,
             argMax(manager, stage_index) AS last_manager
      FROM {database}.stage_entries FINAL
      WHERE excluded = 0
      GROUP BY funnel, user_id) AS e
INNER JOIN (SELECT funnel, max(stage_index) AS last_index
            FROM {database}.funnel_stages FINAL GROUP BY funnel) AS f
    ON f.funnel = e.funnel
WHERE e.furthest_index < f.last_index;

-- Drop-offs (closed lost): a user whose conversion window ended while their
-- furthest stage was this one. Emitted live by the journey agent when the
-- partition's event-time watermark passes the window's end; retracted
-- (tombstone, higher version) if a late event shows they advanced in time.
CREATE TABLE IF NOT EXISTS {database}.dropoffs
(
    funnel          LowCardinality(String),
    stage           LowCardinality(String),
    stage_index     UInt8,
    user_id         String,
    entered_at      DateTime64(3, 'UTC'),
    dropped_at      DateTime64(3, 'UTC') COMMENT 'entered_at + the funnel conversion window',
    channel         LowCardinality(String),
    version         UInt32,
    is_deleted      UInt8,
    excluded        UInt8 DEFAULT 0 COMMENT '1: the person is excluded from this funnel''s figures'
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (funnel, stage, user_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Live closed conversion per stage: won = moved on from the stage, lost =
-- dropped off there; users still inside their window are in neither.
CREATE OR REPLACE VIEW {database}.closed_conversion AS
SELECT e.funnel AS funnel, e.stage AS stage, e.stage_index AS stage_index,
       countIf(t.user_id != '') AS won, countIf(d.user_id != '') AS lost,
       count() - won - lost AS open,
       if(won + lost = 0, NULL, won / (won + lost)) AS closed_conversion
FROM (SELECT funnel, stage, stage_index, user_id FROM {database}.stage_entries FINAL
      WHERE excluded = 0) AS e
LEFT JOIN (SELECT DISTINCT funnel, from_stage, user_id FROM {database}.transitions FINAL
           WHERE excluded = 0) AS t
    ON t.funnel = e.funnel AND t.from_stage = e.stage AND t.user_id = e.user_id
LEFT JOIN (SELECT funnel, stage, user_id FROM {database}.dropoffs FINAL WHERE excluded = 0) AS d
    ON d.funnel = e.funnel AND d.stage = e.stage AND d.user_id = e.user_id
GROUP BY funnel, stage, stage_index;

-- Marketing spend from the optional funnel.spend topic. The latest report for
-- a (channel, campaign, currency, period) wins, so corrections are re-sent.
CREATE TABLE IF NOT EXISTS {database}.spend
(
    event_id        UUID,
    channel         LowCardinality(String),
    campaign        String,
    amount          Decimal(18, 4),
    currency        LowCardinality(String),
    period_start    DateTime64(3, 'UTC'),
    period_end      DateTime64(3, 'UTC'),
    source          String,
    received_at     DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(received_at)
ORDER BY (channel, campaign, currency, period_start, period_end)
SETTINGS non_replicated_deduplication_window = 1000;

-- Cost per acquisition and return on spend per funnel, channel and currency:
-- spend of the channel over all its reported periods, against the new
-- customers and revenue attributed to the channel in those periods.
CREATE OR REPLACE VIEW {database}.cost_by_channel AS
SELECT p.funnel AS funnel, s.channel AS channel, s.currency AS currency,
       any(s.spend) AS spend,
       countIf(p.customer = 'new' AND p.ts >= s.first_start AND p.ts < s.last_end) AS new_customers,
       sumIf(p.amount, p.ts >= s.first_start AND p.ts < s.last_end) AS revenue,
       if(new_customers = 0, NULL, spend / new_customers) AS cost_per_acquisition,
       if(spend = 0, NULL, (revenue - spend) / spend) AS return_on_spend
FROM (SELECT channel, currency, sum(amount) AS spend, min(period_start) AS first_start,
             max(period_end) AS last_end
      FROM {database}.spend FINAL GROUP BY channel, currency) AS s
LEFT JOIN (SELECT funnel, attributed_channel AS channel, currency, ts, customer, amount
           FROM {database}.purchases
           WHERE funnel != '') AS p
    ON p.channel = s.channel AND p.currency = s.currency
GROUP BY funnel, channel, currency;
