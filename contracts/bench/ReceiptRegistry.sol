// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice Bench baseline: a protocol that records every piece of work on chain, one transaction per
/// receipt, each storing the receipt's hash and who submitted it.
contract ReceiptRegistry {
    error ReceiptAlreadySubmitted(bytes32 receiptHash);

    event ReceiptSubmitted(bytes32 indexed receiptHash, address indexed worker);

    mapping(bytes32 => address) public submitterOf;

    function submit(bytes32 receiptHash) external {
        if (submitterOf[receiptHash] != address(0)) revert ReceiptAlreadySubmitted(receiptHash);
        submitterOf[receiptHash] = msg.sender;
        emit ReceiptSubmitted(receiptHash, msg.sender);
    }
}
