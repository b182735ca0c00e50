#!/usr/bin/env node
// Compile the Solidity sources with the npm-pinned solc-js (standard-JSON API) into build/.
//
//   node compile.js              write build/<dir>/<Contract>.json for every contract
//   node compile.js --out DIR    write the artifacts under DIR instead
//   node compile.js --check      compile in memory and exit 1 when build/ differs from a fresh compile
//
// src/ holds the deployed contract; test/ and bench/ hold contracts that only tests and benches deploy.
// Settings are pinned here (optimizer, runs, evmVersion) so both backends (py-evm in web3[tester], anvil)
// run the same bytecode and every machine produces byte-identical artifacts.
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const ROOT = __dirname;
const SOURCE_DIRS = ["src", "test", "bench"];
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "evm.methodIdentifiers"] },
  },
};

function parseArgs(argv) {
  const args = { check: false, out: path.join(ROOT, "build") };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--check") args.check = true;
    else if (argv[i] === "--out") args.out = path.resolve(argv[++i]);
    else if (argv[i] === "--help" || argv[i] === "-h") {
      console.log("usage: node compile.js [--out DIR] [--check]");
      process.exit(0);
    } else {
      console.error(`unknown argument: ${argv[i]}`);
      process.exit(2);
    }
  }
  return args;
}

function readSources() {
  const sources = {};
  for (const dir of SOURCE_DIRS) {
    const full = path.join(ROOT, dir);
    if (!fs.existsSync(full)) continue;
    for (const name of fs.readdirSync(full).sort()) {
      if (name.endsWith(".sol")) sources[`${dir}/${name}`] = { content: fs.readFileSync(path.join(full, name), "utf8") };
    }
  }
  return sources;
}

function compile(sources) {
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) console.error(e.formattedMessage);
  if (errors.length) {
    console.error(`solc: ${errors.length} error(s)`);
    process.exit(1);
  }
  const artifacts = {};
  for (const [sourceName, contracts] of Object.entries(output.contracts)) {
    for (const [contractName, c] of Object.entries(contracts)) {
      if (!c.evm.bytecode.object) continue; // interfaces
      const file = path.join(path.dirname(sourceName) === "src" ? "" : path.dirname(sourceName), `${contractName}.json`);
      const artifact = {
        contractName,
        sourceName,
        compiler: { solc: solc.version(), ...SETTINGS, outputSelection: undefined },
        abi: c.abi,
        methodIdentifiers: c.evm.methodIdentifiers,
        bytecode: "0x" + c.evm.bytecode.object,
        deployedBytecode: "0x" + c.evm.deployedBytecode.object,
      };
      artifacts[file] = JSON.stringify(artifact, null, 2) + "\n";
    }
  }
  return artifacts;
}

function listJson(dir, prefix = "") {
  if (!fs.existsSync(dir)) return [];
  const found = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const rel = path.join(prefix, entry.name);
    if (entry.isDirectory()) found.push(...listJson(path.join(dir, entry.name), rel));
    else if (entry.name.endsWith(".json")) found.push(rel);
  }
  return found.sort();
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const artifacts = compile(readSources());
  if (args.check) {
    const problems = [];
    for (const [file, text] of Object.entries(artifacts)) {
      const committed = path.join(args.out, file);
      if (!fs.existsSync(committed)) problems.push(`missing ${file}`);
      else if (fs.readFileSync(committed, "utf8") !== text) problems.push(`stale ${file}`);
    }
    for (const file of listJson(args.out)) if (!(file in artifacts)) problems.push(`unexpected ${file}`);
    if (problems.length) {
      console.error(`build/ differs from a fresh compile (run \`make contracts\`): ${problems.join(", ")}`);
      process.exit(1);
    }
    console.log(`build/ matches a fresh compile (${Object.keys(artifacts).length} artifacts, solc ${solc.version()})`);
    return;
  }
  for (const [file, text] of Object.entries(artifacts)) {
    const target = path.join(args.out, file);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, text);
    console.log(`wrote ${path.relative(process.cwd(), target)}`);
  }
}

main();
