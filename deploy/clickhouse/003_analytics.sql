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
    updated_at      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (funnel, stage);

-- Cohort conversion: of the users who entered from_stage on cohort_day, how
-- many reached to_stage within the funnel's conversion window (converted),
-- how many ran out of it without (timed_out: closed lost), and how many are
-- still inside it (open). closed_conversion = converted / (converted +
-- timed_out), open users excluded - the sales rule.
CREATE OR REPLACE VIEW {database}.cohort_conversion AS
SELECT toDate(a.ts) AS cohort_day, a.funnel AS funnel, a.channel AS channel,
       a.stage AS from_stage, s.stage AS to_stage,
       count() AS entered,
       countIf(b.user_id != '' AND b.ts >= a.ts
               AND b.ts <= a.ts + toIntervalSecond(s.conversion_window_seconds)) AS converted,
       countIf(NOT (b.user_id != '' AND b.ts >= a.ts
                    AND b.ts <= a.ts + toIntervalSecond(s.conversion_window_seconds))
               AND a.ts + toIntervalSecond(s.conversion_window_seconds) < now64(3)) AS timed_out,
       entered - converted - timed_out AS open,
       converted / entered AS cohort_conversion,
       if(converted + timed_out = 0, NULL, converted / (converted + timed_out)) AS closed_conversion
FROM (SELECT funnel, stage, stage_index, user_id, ts, channel
      FROM {database}.stage_entries FINAL) AS a
INNER JOIN (SELECT funnel, stage, stage_index, conversion_window_seconds
            FROM {database}.funnel_stages FINAL) AS s
    ON s.funnel = a.funnel
LEFT JOIN (SELECT funnel, stage, user_id, ts FROM {database}.stage_entries FINAL) AS b
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
GROUP BY funnel, from_stage, to_stage, campaign;

-- Entries per stage by every breakdown at once (filter or group as needed).
CREATE OR REPLACE VIEW {database}.stage_entries_breakdown AS
SELECT funnel, stage, stage_index, channel, campaign, product, region, manager,
       count() AS users
FROM {database}.stage_entries FINAL
GROUP BY funnel, stage, stage_index, channel, campaign, product, region, manager;

-- Revenue per funnel, channel and currency, split by new vs returning customers.
CREATE OR REPLACE VIEW {database}.revenue_by_customer AS
SELECT funnel, attributed_channel AS channel, currency, customer,
       count() AS orders, sum(amount) AS revenue, avg(amount) AS average_order_value,
       uniqExact(user_id) AS customers
FROM {database}.events FINAL
WHERE event_type = 'purchase' AND funnel != ''
GROUP BY funnel, channel, currency, customer;

-- Customer value: revenue per paying customer, per funnel, channel and currency.
CREATE OR REPLACE VIEW {database}.customer_value_by_channel AS
SELECT funnel, attributed_channel AS channel, currency,
       uniqExact(user_id) AS customers, sum(amount) AS revenue,
       revenue / customers AS revenue_per_customer
FROM {database}.events FINAL
WHERE event_type = 'purchase' AND funnel != ''
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
      GROUP BY funnel, user_id) AS e
INNER JOIN (SELECT funnel, max(stage_index) AS last_index
            FROM {database}.funnel_stages FINAL GROUP BY funnel) AS f
    ON f.funnel = e.funnel
WHERE e.furthest_index < f.last_index;
