// The dashboard in a real browser: Debian's Chromium, driven by playwright-core, on the
// page of a job that really trains (scripts/test-dashboard.sh starts it and passes
// FERAL_DASHBOARD_URL, the job's page). The round and epoch must advance on the page with
// no reload and no polling (one event stream, no repeated fetches of the job), and the
// curves, per-class F1, confusion matrix and pseudo-label histogram must be drawn. The job
// list must be live too: a second job, submitted here with `feral submit` (FERAL_BIN,
// FERAL_COORDINATOR, FERAL_SECOND_SPEC) while the list is open, appears and finishes on it
// without a reload; then the compare view overlays both jobs' curves, puts their per-class
// F1 side by side and names the spec fields in which they differ.
// Screenshots go to FERAL_SCREENSHOTS.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chromium } from 'playwright-core';

const url = process.env.FERAL_DASHBOARD_URL;
const screenshots = process.env.FERAL_SCREENSHOTS || '.';
const browserPath = process.env.FERAL_CHROMIUM || '/usr/bin/chromium';

async function progress(page) {
  return page.locator('#progress').evaluate((p) => ({
    round: Number(p.dataset.round), epoch: Number(p.dataset.epoch), state: p.dataset.state,
  }));
}

// Waits (polling the page, not the server) until check(progress) holds.
async function waitFor(page, what, check, seconds) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const now = await progress(page).catch(() => null);
    if (now && check(now)) return now;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${seconds} s (last seen ${JSON.stringify(now)})`);
    await page.waitForTimeout(250);
  }
}

test('the dashboard shows a training job live', { timeout: 900_000 }, async () => {
  assert.ok(url, 'FERAL_DASHBOARD_URL names the job page');
  const jobId = new URL(url).hash.replace('#/jobs/', '');
  const browser = await chromium.launch({ executablePath: browserPath, args: ['--no-sandbox', '--disable-gpu'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const requests = [];
    page.on('request', (request) => requests.push(new URL(request.url()).pathname));
    let navigations = 0;
    page.on('framenavigated', (frame) => { if (frame === page.mainFrame()) navigations += 1; });
    const errors = [];
    page.on('pageerror', (error) => errors.push(error.message));

    await page.goto(url);
    const first = await waitFor(page, 'the job training', (p) => p.state === 'training' && p.epoch >= 1, 300);
    await page.screenshot({ path: `${screenshots}/job-training.png`, fullPage: true });

    // Live: a later epoch and then the student round appear on the same page.
    await waitFor(page, 'a later epoch', (p) => p.round > first.round || p.epoch > first.epoch, 300);
    const student = await waitFor(page, 'the pseudo-label round', (p) => p.round >= 1 && p.epoch >= 1, 600);
    assert.ok(student.round >= 1);

    // While it trains: what the job is (dataset, duration, throughput, time left) and its spec.
    const facts = await page.locator('#facts').innerText();
    assert.match(facts, /dataset \/.+ · started .+ · running for .+images\/s in the last epoch/, facts);
    assert.match(await page.locator('#spec pre').textContent(), /\[semi_supervised\]/);

    // Meanwhile, in a second tab, the job list, live: a second job submitted now appears on
    // it and finishes there, with no reload and no fetch of the list but its event stream.
    const list = await browser.newPage({ viewport: { width: 1280, height: 700 } });
    const listRequests = [];
    list.on('request', (request) => listRequests.push(new URL(request.url()).pathname));
    let listNavigations = 0;
    list.on('framenavigated', (frame) => { if (frame === list.mainFrame()) listNavigations += 1; });
    list.on('pageerror', (error) => errors.push(error.message));
    await list.goto(new URL('/#/', url).toString());
    await list.locator(`#jobs tr[data-job="${jobId}"]`).waitFor({ timeout: 30_000 });
    assert.match(await list.locator(`#jobs tr[data-job="${jobId}"]`).innerText(), /training|pseudo_labeling|selecting|succeeded/);
    assert.ok(await list.locator('#workers tr[data-worker]').count() >= 1);
    const submitted = execFileSync(process.env.FERAL_BIN, ['--coordinator', process.env.FERAL_COORDINATOR, 'submit', process.env.FERAL_SECOND_SPEC], { encoding: 'utf8' });
    const secondId = submitted.match(/submitted job (\S+)/)?.[1];
    assert.ok(secondId, `feral submit said: ${submitted}`);
    await list.locator(`#jobs tr[data-job="${secondId}"]`).waitFor({ timeout: 60_000 });
    await list.screenshot({ path: `${screenshots}/jobs.png`, fullPage: true });

    const done = await waitFor(page, 'the job ending', (p) => ['succeeded', 'failed', 'cancelled'].includes(p.state), 600);
    assert.equal(done.state, 'succeeded');
    assert.equal(navigations, 1, 'the page never reloaded');
    const jobFetches = requests.filter((p) => p === `/api/jobs/${jobId}`).length;
    const streams = requests.filter((p) => p === `/api/jobs/${jobId}/events`).length;
    assert.equal(jobFetches, 0, 'no polling of the job');
    assert.ok(streams >= 1 && streams <= 3, `one event stream (reopened at most twice), got ${streams}`);

    // The curves: one point per epoch of both rounds, with a dashed line where round 1 starts.
    const points = Number(await page.locator('#f1-chart path.series').getAttribute('data-points'));
    assert.ok(points >= 2, `the macro-F1 curve has ${points} points`);
    assert.equal(await page.locator('#loss-chart path.series').count(), 1);
    assert.equal(await page.locator('#accuracy-chart path.series').count(), 2, 'train and val accuracy');
    assert.ok(await page.locator('#f1-chart line.round-line').count() >= 1, 'round boundary drawn');
    assert.equal(await page.locator('#f1-chart text.round-label').first().textContent(), 'round 1', 'the boundary is labelled');
    assert.ok(await page.locator('#f1-chart text.epoch-tick').count() >= 2, 'epoch ticks on the x axis');
    // The F1 axis spans the data (to the nearest 0.05 outside it), not 0 to 1.
    const f1s = (await page.locator('#f1-chart path.series').getAttribute('data-values')).split(' ').map(Number);
    const axis = (await page.locator('#f1-chart text').allTextContents()).slice(0, 5).map(Number);
    const [low, high] = [Math.max(0, Math.floor(Math.min(...f1s) * 20 - 1) / 20), Math.min(1, Math.ceil(Math.max(...f1s) * 20 + 1) / 20)];
    assert.deepEqual([axis[0], axis[4]], [Number(low.toFixed(2)), Number(high.toFixed(2))], `F1 axis ${axis} for ${f1s}`);
    // A finished job's panels say they show the saved model.
    assert.match(await page.locator('#view').innerText(), /Per-class F1 \(validation of the saved model, round \d+\)/);
    // The confusion matrix: classes × classes cells holding every validation sample.
    const classes = await page.locator('#per-class rect').count();
    assert.ok(classes >= 2, `${classes} classes in the per-class F1 chart`);
    const cells = await page.locator('#confusion rect.cell').evaluateAll((cs) => cs.map((c) => Number(c.dataset.count)));
    assert.equal(cells.length, classes * classes);
    assert.ok(cells.reduce((a, b) => a + b, 0) > 0, 'the matrix counts validation samples');
    // The round table and the pseudo-label histogram of round 1.
    assert.ok(await page.locator('#rounds tr[data-round="1"]').count() === 1);
    assert.equal(await page.locator('#histogram-r1 rect').count(), classes);
    assert.match(await page.locator('#facts').innerText(), / · took .+images\/s/);
    await page.screenshot({ path: `${screenshots}/job-finished.png`, fullPage: true });

    // The second job finishes on the list, which neither reloaded nor fetched the list.
    await list.locator(`#jobs tr[data-job="${secondId}"][data-state="succeeded"]`).waitFor({ timeout: 600_000 });
    assert.equal(listNavigations, 1, 'the list never reloaded');
    assert.equal(listRequests.filter((p) => p === '/api/jobs').length, 0, 'no polling of the list');
    const listStreams = listRequests.filter((p) => p === '/api/events').length;
    assert.ok(listStreams >= 1 && listStreams <= 3, `one list stream (reopened at most twice), got ${listStreams}`);

    // Compare: pick both jobs, and see them side by side.
    assert.ok(await list.locator('#compare').isDisabled(), 'compare needs two jobs');
    await list.locator(`input[data-compare="${jobId}"]`).check();
    await list.locator(`input[data-compare="${secondId}"]`).check();
    await list.locator('#compare').click();
    await list.locator('#compare-f1').waitFor({ timeout: 30_000 });
    assert.equal(await list.locator('#compare-f1 path.series').count(), 2, 'both F1 curves overlaid');
    assert.equal(await list.locator('#compare-loss path.series').count(), 2, 'both loss curves overlaid');
    const curvePoints = await list.locator('#compare-f1 path.series').evaluateAll((ps) => ps.map((p) => Number(p.dataset.points)));
    assert.deepEqual(curvePoints.sort((a, b) => a - b), [2, points], 'two epochs beside the demo job\'s');
    assert.equal(await list.locator('#compare-jobs tr[data-job]').count(), 2);
    const classRows = await list.locator('#compare-per-class tr[data-class]').count();
    assert.equal(classRows, classes, 'one row per class');
    assert.equal(await list.locator('#compare-per-class tr[data-class] td.num').count(), 2 * classes, 'each job\'s F1 per class');
    const differing = await list.locator('#spec-diff tr[data-field]').evaluateAll((rows) => rows.map((r) => r.dataset.field));
    for (const field of ['name', 'train.epochs', 'semi_supervised.rounds']) assert.ok(differing.includes(field), `${field} in ${differing}`);
    assert.ok(!differing.includes('dataset') && !differing.includes('train.batch_size'), `only differing fields: ${differing}`);
    await list.screenshot({ path: `${screenshots}/compare.png`, fullPage: true });
    await list.close();

    assert.deepEqual(errors, [], 'no script errors');
  } finally {
    await browser.close();
  }
});
