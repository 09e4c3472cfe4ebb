// Calls recipelens.v1.RecipeSearch/SearchByImage from Node with only the .proto file.
// Usage: node search.js PROTO_ROOT ADDRESS PHOTO [TOP_K]   → prints the response as JSON.
"use strict";
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [protoRoot, address, photo, topK] = process.argv.slice(2);
const definition = protoLoader.loadSync(path.join(protoRoot, "recipelens/v1/search.proto"), {
  includeDirs: [protoRoot],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const v1 = grpc.loadPackageDefinition(definition).recipelens.v1;
const client = new v1.RecipeSearch(address, grpc.credentials.createInsecure());
const deadline = new Date(Date.now() + 20000);
client.SearchByImage(
  { image: fs.readFileSync(photo), top_k: Number(topK || 3) },
  { deadline },
  (err, response) => {
    if (err) {
      console.error(JSON.stringify({ code: err.code, details: err.details }));
      process.exit(2);
    }
    console.log(JSON.stringify(response));
    client.close();
  },
);
