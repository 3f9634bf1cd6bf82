// An ES module: the default export is the filter.
const QUIET_DAYS = 7;

export default function churnRisk(event) {
  const ctx = event.getContext();
  return ctx.containsKey('platform')
    && ctx.get('platform') === 'mobile'
    && (event.data.days_since_last_purchase ?? 0) >= QUIET_DAYS;
}
