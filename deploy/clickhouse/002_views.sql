-- Views for the common questions. Each reads the deduplicated rows.

-- Windowed counts as plain numbers.
CREATE OR REPLACE VIEW {database}.stage_counts_final AS
SELECT window_start, window_seconds, funnel, kind, from_stage, stage, channel,
       count() AS users
FROM {database}.stage_counts FINAL
GROUP BY window_start, window_seconds, funnel, kind, from_stage, stage, channel;

-- Entries per day, funnel, stage and (attributed) channel.
CREATE OR REPLACE VIEW {database}.daily_stage_entries AS
SELECT toDate(ts) AS day, funnel, stage, stage_index, channel, count() AS users
FROM {database}.stage_entries FINAL
GROUP BY day, funnel, stage, stage_index, channel;

-- Period conversion by day and channel: users who entered each stage that day
-- over users who entered the previous stage that day (a period ratio, the
-- same thing Prometheus computes; see cohort_conversion for the cohort view).
CREATE OR REPLACE VIEW {database}.conversion_by_day_channel AS
SELECT day, funnel, channel, stage, stage_index, users,
       any(users) OVER (PARTITION BY day, funnel, channel ORDER BY stage_index
                        ROWS BETWEEN 1 PRECEDING AND 1 PRECEDING) AS previous_stage_users,
       if(previous_stage_users = 0 OR stage_index = 0, NULL, users / previous_stage_users)
           AS period_conversion
FROM {database}.daily_stage_entries;

-- Cohort conversion: of the users who entered from_stage on cohort_day (by
-- attributed channel), how many have reached to_stage (any later stage of the
-- funnel) so far. Analysts trust this number; the period ratio above is what
-- Prometheus can compute cheaply.
CREATE OR REPLACE VIEW {database}.cohort_conversion AS
SELECT toDate(a.ts) AS cohort_day, a.funnel AS funnel, a.channel AS channel,
       a.stage AS from_stage, s.stage AS to_stage,
       count() AS entered,
       countIf(b.user_id != '') AS converted,
       converted / entered AS cohort_conversion
FROM (SELECT funnel, stage, stage_index, user_id, ts, channel
      FROM {database}.stage_entries FINAL) AS a
INNER JOIN (SELECT DISTINCT funnel, stage, stage_index FROM {database}.stage_entries) AS s
    ON s.funnel = a.funnel
LEFT JOIN (SELECT funnel, stage, user_id FROM {database}.stage_entries FINAL) AS b
    ON b.funnel = a.funnel AND b.stage = s.stage AND b.user_id = a.user_id
WHERE s.stage_index > a.stage_index
GROUP BY cohort_day, funnel, channel, from_stage, to_stage;

-- Time to convert per transition: quantiles in seconds.
CREATE OR REPLACE VIEW {database}.time_to_convert AS
SELECT funnel, from_stage, to_stage, count() AS transitions,
       quantileExact(0.5)(seconds) AS p50_seconds,
       quantileExact(0.9)(seconds) AS p90_seconds,
       quantileExact(0.99)(seconds) AS p99_seconds
FROM {database}.transitions FINAL
GROUP BY funnel, from_stage, to_stage;

-- Revenue per funnel, attributed channel and currency (each event_id once).
CREATE OR REPLACE VIEW {database}.revenue_by_channel AS
SELECT funnel, attributed_channel AS channel, currency,
       count() AS orders, sum(amount) AS revenue, avg(amount) AS average_order_value
FROM {database}.events FINAL
WHERE event_type = 'purchase'
GROUP BY funnel, channel, currency;
