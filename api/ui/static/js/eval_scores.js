// The job page's "score over steps" (issue #24): the eval runs a job made at each checkpoint and of
// its fine-tuned model (GET /v1/fine_tuning/jobs/{id}/eval_scores) as chart series, one per eval and
// grader, of pass rate against step, drawn beside the loss. No DOM here, so tests run it under node.

const COLORS = ["#15803d", "#7c3aed", "#0e7490", "#be185d", "#a16207", "#1d4ed8", "#b91c1c", "#4d7c0f"];

/**
 * {series: [{key, label, color}], data: {key: [{x: step, y: pass rate}]}, pending: runs not finished}.
 * Only completed runs are points (a running run's rate is that of the items graded so far). The
 * fine-tuned model's run is a point only where no checkpoint of that eval has its step: otherwise it
 * is the same weights. A label names the eval too when the job has runs of more than one.
 */
export function scoreSeries(rows) {
  const done = rows.filter((row) => row.status === "completed");
  const checkpointAt = new Set(done.filter((row) => row.evaluated === "checkpoint")
    .map((row) => `${row.eval_id} ${row.step}`));
  const evals = new Set(rows.map((row) => row.eval_id));
  const series = [], data = {};
  for (const row of done) {
    if (row.evaluated !== "checkpoint" && checkpointAt.has(`${row.eval_id} ${row.step}`)) continue;
    for (const criterion of row.per_testing_criteria_results) {
      if (criterion.pass_rate === null) continue;
      const key = `${row.eval_id}/${criterion.testing_criteria}`;
      if (!(key in data)) {
        data[key] = [];
        const label = evals.size > 1 ? `${row.eval_name || row.eval_id}: ${criterion.testing_criteria}`
          : criterion.testing_criteria;
        series.push({key, label, color: COLORS[series.length % COLORS.length]});
      }
      data[key].push({x: row.step, y: criterion.pass_rate});
    }
  }
  const pending = rows.filter((row) => row.status === "queued" || row.status === "in_progress").length;
  return {series, data, pending};
}
