// Pass rates with their uncertainty, for the eval pages. Evals are small (tens to hundreds of items),
// so a rate alone misleads: 3/5 and 300/500 both read 60%. The Wilson score interval is used
// rather than the normal ("Wald") one because it stays inside [0, 1] and keeps close to its
// nominal coverage at small n and at rates near 0 or 1 (Brown, Cai & DasGupta 2001), where the
// Wald interval collapses to a point (0/10 would read [0%, 0%]).

export const Z95 = 1.959963984540054; // the standard normal's 97.5th percentile: a two-sided 95% interval

/**
 * The Wilson score interval of `successes` out of `trials`:
 *   center = (p + z²/2n) / (1 + z²/n),  half = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²)
 * {rate: p, low, high}, clamped to [0, 1] (rounding can step a hair outside); null when there is
 * nothing to rate (trials 0).
 */
export function wilson(successes, trials, z = Z95) {
  if (!(trials > 0) || !(successes >= 0) || successes > trials) return null;
  const p = successes / trials, z2 = z * z;
  const denominator = 1 + z2 / trials;
  const center = (p + z2 / (2 * trials)) / denominator;
  const half = (z / denominator) * Math.sqrt((p * (1 - p)) / trials + z2 / (4 * trials * trials));
  return {rate: p, low: Math.max(0, center - half), high: Math.min(1, center + half)};
}

/** 0.6 -> "60.0%": one decimal, so that intervals of a few hundred items still differ in print. */
export function percent(fraction) {
  return `${(fraction * 100).toFixed(1)}%`;
}

/** "[23.1%, 88.2%]", the interval as the eval pages print it; "–" without one. */
export function intervalText(interval) {
  return interval ? `[${percent(interval.low)}, ${percent(interval.high)}]` : "–";
}
